"""Swap by reference: one ``(model, version)`` pair replaced under a lock.

Readers call :meth:`ModelHolder.get` once per request (or batch) and use that pair to the end, so a
swap in the middle of a request can never mix two versions. A candidate is built and checked aside
by the caller; :meth:`swap` only refuses versions that would move time backwards.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from index_manager.errors import NoModel

M = TypeVar("M")


class ModelHolder(Generic[M]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pair: tuple[M, str] | None = None

    def get(self) -> tuple[M, str]:
        pair = self._pair  # one atomic read; no lock needed to read a reference
        if pair is None:
            raise NoModel("no model version is loaded yet")
        return pair

    def peek(self) -> tuple[M, str] | None:
        return self._pair

    @property
    def version(self) -> str | None:
        pair = self._pair
        return None if pair is None else pair[1]

    def swap(self, model: M, version: str) -> bool:
        """Install ``(model, version)`` if it is newer than the current one; returns whether it did."""
        with self._lock:
            if self._pair is not None and version <= self._pair[1]:
                return False
            self._pair = (model, version)
            return True
