"""The worker's heap: a refreeze collects garbage cycles, even ones an earlier refreeze froze."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stream.worker.memory import refreeze_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def _cycle() -> weakref.ref[_Node]:
    return weakref.ref(_Node())


def test_a_refreeze_collects_cycles_then_freezes_what_lives(thawed: None) -> None:
    garbage = _cycle()
    alive = _Node()
    frozen = refreeze_heap()
    assert garbage() is None
    assert frozen > 0
    # frozen: tracked, yet in none of the collector's generations (the freeze count itself may
    # drop meanwhile: other threads of the test session free frozen objects)
    assert gc.is_tracked(alive) and not any(o is alive for o in gc.get_objects())
    gc.collect()  # a frozen object is out of the collector's way: still there, and not garbage
    assert alive.me is alive


def test_an_object_frozen_earlier_that_became_garbage_is_collected_at_the_next_refreeze(thawed: None) -> None:
    node = _Node()
    ref = weakref.ref(node)
    refreeze_heap()
    del node
    gc.collect()
    assert ref() is not None  # frozen: a full collection does not see it
    refreeze_heap()
    assert ref() is None
