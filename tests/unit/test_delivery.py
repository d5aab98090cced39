"""Stepping a delivery coroutine by hand: the fast path makes no task, the slow path behaves as asyncio."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.worker.delivery import deliver, use_inline_delivery


def test_a_delivery_that_does_not_block_finishes_in_the_call_and_makes_no_task() -> None:
    async def main() -> None:
        got: list[int] = []

        async def put(x: int) -> None:
            got.append(x)

        before = len(asyncio.all_tasks())
        assert deliver(put(1)) is None
        assert got == [1]
        assert len(asyncio.all_tasks()) == before

    asyncio.run(main())


def test_an_error_raised_before_blocking_surfaces_at_once() -> None:
    async def bad() -> None:
        raise ValueError("undecodable")

    with pytest.raises(ValueError, match="undecodable"):
        deliver(bad())


def test_a_blocked_delivery_resumes_with_the_future_result_or_its_error() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[Any] = []

        async def wait_for(fut: asyncio.Future[int]) -> str:
            try:
                seen.append(await fut)
            except KeyError as exc:
                seen.append(repr(exc))
            await asyncio.sleep(0)  # a bare yield too
            return "done"

        ok, failing = loop.create_future(), loop.create_future()
        rest = deliver(wait_for(ok))
        assert rest is not None and seen == []
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        assert not task.done()
        ok.set_result(7)
        assert await task == "done" and seen == [7]

        rest = deliver(wait_for(failing))
        assert rest is not None
        failing.set_exception(KeyError("full"))
        assert await rest == "done" and seen == [7, "KeyError('full')"]

    asyncio.run(main())


def test_cancelling_a_blocked_delivery_cancels_what_it_waits_for_and_runs_its_cleanup() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        blocker = loop.create_future()
        cleaned: list[str] = []

        async def put() -> None:
            try:
                await blocker
            except asyncio.CancelledError:
                cleaned.append("cancelled")
                raise
            finally:
                cleaned.append("finally")

        rest = deliver(put())
        assert rest is not None
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert blocker.cancelled()
        assert cleaned == ["cancelled", "finally"]

    asyncio.run(main())


def test_inline_delivery_installs_only_under_the_faust_series_it_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    # stand-in modules: importing Faust itself starts a process (a unit test must not)
    import sys
    import types

    from stream.worker import delivery

    class Consumer:
        async def _drain_messages(self, fetcher: Any) -> None: ...

    own = Consumer._drain_messages
    faust = types.ModuleType("faust")
    consumer = types.ModuleType("faust.transport.consumer")
    consumer.Consumer = Consumer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "faust", faust)
    monkeypatch.setitem(sys.modules, "faust.transport.consumer", consumer)
    faust.__version__ = "9.9.9"  # type: ignore[attr-defined]
    assert use_inline_delivery() is False
    assert Consumer._drain_messages is own
    faust.__version__ = delivery.FAUST_SERIES + "3"  # type: ignore[attr-defined]
    assert use_inline_delivery() is True
    assert Consumer._drain_messages is delivery.drain_messages
