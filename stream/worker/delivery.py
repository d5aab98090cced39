"""Faust's fetch loop without four asyncio tasks per message.

Faust's consumer hands each fetched message to the topic's channels with
``await self.wait_first(callback(message), self.suspend_flow.wait())``, so that a delivery blocked on a
full buffer (or on flow control during a rebalance) can be abandoned when the flow is suspended.
``wait_first`` wraps both coroutines, plus the consumer's stopped and crashed events, in four tasks,
waits for the first, then cancels the other three: about a tenth of the worker's CPU in the soak
profile, for a delivery that almost never blocks (it decodes the message and puts it in a queue).

:func:`drain_messages` is Faust 0.15's ``Consumer._drain_messages`` with that one call changed: the
delivery coroutine is stepped once by hand. If it finishes there (the usual case), no task is made;
if it would block, the rest of it runs under the same ``wait_first`` as before (:func:`finish`), so
a suspended flow abandons it exactly as Faust does. What is delivered, in which order, and what is
acked and committed do not change.

The records of a topic with a fetch feed (``stream.worker.fetches``) skip the conductor: they are
appended to the feed, whose agent takes them in whole batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

from stream.worker.fetches import fetch_feeds

log = logging.getLogger("musicrec.worker")

# the Faust release whose fetch loop drain_messages reproduces (the loop is private to Faust)
FAUST_SERIES = "0.15."


async def finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Run the rest of ``coro``, which yielded ``yielded`` (a future, or None for a bare yield) when
    stepped by hand, as the event loop would have: resume it when that future is done; cancelling
    this task cancels that future and throws the cancellation into ``coro``."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                # what a task does with a future its coroutine yields: take the "blocking" mark the
                # future set when it yielded, or awaiting it again is refused
                yielded._asyncio_future_blocking = False
                await yielded
        except asyncio.CancelledError as exc:
            thrown: BaseException | None = exc
        except BaseException:  # the future's own error: the coroutine reads it from the future
            thrown = None
        else:
            thrown = None
        try:
            yielded = coro.send(None) if thrown is None else coro.throw(thrown)
        except StopIteration as stop:
            return stop.value


def deliver(coro: Coroutine[Any, Any, Any]) -> Awaitable[Any] | None:
    """Step ``coro`` once: None if it finished (its exception, if any, is raised here), else an
    awaitable that runs the rest of it."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return finish(coro, yielded)


async def drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - Faust's loop; the service tests run it
    from faust.transport.consumer import CONSUMER_FETCHING

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    feeds = fetch_feeds(self.app)  # topics whose records go to their agent whole (stream.worker.fetches)
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        feed = feeds.get(message.topic) if feeds else None
                        if feed is not None:
                            if not feed.put(message):  # full: wait for the agent, as for a full queue
                                await self.wait_first(feed.put_when_room(message), self.suspend_flow.wait())
                        else:
                            rest = deliver(callback(message))
                            if rest is not None:  # blocked: Faust's own wait, abandoned if the flow is suspended
                                await self.wait_first(rest, self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


def use_inline_delivery() -> bool:
    """Install :func:`drain_messages` as the fetch loop of Faust's Kafka consumer (process-wide, as a
    worker wants). False, and Faust's own loop kept, under a Faust release it was not written for."""
    import faust
    from faust.transport.consumer import Consumer

    if not faust.__version__.startswith(FAUST_SERIES):
        log.warning("faust %s: keeping its own fetch loop (inline delivery follows %sx)", faust.__version__,
                    FAUST_SERIES)
        return False
    Consumer._drain_messages = drain_messages  # type: ignore[method-assign]
    return True
