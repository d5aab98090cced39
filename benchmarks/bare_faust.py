"""The reference of ``musicrec bench ingest``: a Faust agent that only consumes (``take_events``).

Run as ``python -m benchmarks.bare_faust`` with the same settings as a worker plus
``BARE_EXPECT`` (events to wait for) and ``BARE_OUT`` (where to write the JSON result). It builds its
app with the worker's own options (``stream.kafka_config.faust_app_options``), batch size and window,
so the two figures differ only by what the worker does with a batch. With ``BARE_INLINE=1`` it also
takes the worker's fetch loop (``stream.worker.delivery``) and, as the worker does, whole fetches
(``stream.worker.fetches``) instead of Faust's per-message stream.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import faust

from stream.kafka_config import faust_app_options, use_fetch_max_wait
from stream.settings import load_settings
from stream.worker.batching import consumer_highwater
from stream.worker.delivery import use_inline_delivery
from stream.worker.fetches import FetchFeed, take_fetched


def main() -> None:
    settings = load_settings()
    cfg = settings.stream
    expect = int(os.environ["BARE_EXPECT"])
    out = os.environ["BARE_OUT"]
    use_fetch_max_wait(cfg.fetch_max_wait)
    inline = os.environ.get("BARE_INLINE") == "1" and use_inline_delivery()
    app = faust.App(cfg.app_id, **faust_app_options(settings, datadir="bare-faust"))
    topic = app.topic(cfg.events_topic, key_type=bytes, value_type=bytes)
    state = {"count": 0, "first_at": 0.0, "first_count": 0}
    feed = FetchFeed.install(app, cfg.events_topic, cfg.batch_size, consumer_highwater(app)) if inline else None

    def batches(stream: faust.StreamT) -> AsyncIterator[list[Any]]:
        if feed is not None:
            return take_fetched(feed, cfg.batch_within, cfg.batch_catchup)
        return stream.take_events(cfg.batch_size, within=cfg.batch_within)  # type: ignore[attr-defined]

    @app.agent(topic)
    async def consume(stream: faust.StreamT) -> None:
        async for events in batches(stream):
            state["count"] += len(events)
            now = time.time()
            if not state["first_at"]:
                state["first_at"], state["first_count"] = now, state["count"]
            if state["count"] >= expect:
                with open(out, "w") as fh:
                    json.dump({**state, "last_at": now}, fh)
                os._exit(0)  # the figure is written; skip Faust's slow shutdown

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
