"""The Faust worker: a thin shell that feeds micro-batches to :class:`stream.pipeline.BatchProcessor`.

Faust's ``take_events`` acks a batch only after the loop body returns, so offsets are committed
only for events already in the log, in Redis and (if refused) in the dead-letter topic. A crash
before that means redelivery, and the log deduplicates redelivered events by ``event_id``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import faust
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faust.exceptions import ProducerSendError

from index_manager.errors import ServiceUnavailable
from stream.catalog_feed import follow_catalog
from stream.pipeline import BatchProcessor, DeadLetter, Message
from stream.settings import Settings, StreamConfig

log = logging.getLogger("musicrec.worker")

REDIS_RETRY_MAX_S = 5.0
# What the worker's producer may send: a refused message goes to the dead-letter topic whole, and
# it may be as large as the broker let it into the events topic (Kafka's default is ~1 MB, the
# producer's 1,000,000 bytes). Larger dead letters go out truncated (``DeadLetter.truncated``).
DLQ_MAX_REQUEST_BYTES = 8 * 1024 * 1024


def _too_large(exc: BaseException | None) -> bool:
    """Whether a send failed because the record is too large (for the producer or the broker)."""
    while exc is not None:
        if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError) or "TooLarge" in type(exc).__name__:
            return True
        exc = exc.__cause__
    return False


def faust_broker_options(cfg: StreamConfig) -> dict[str, Any]:
    """Broker URL and credentials for Faust, from the same settings kafka-python uses."""
    opts: dict[str, Any] = {"broker": ";".join(f"kafka://{h.strip()}" for h in cfg.kafka_bootstrap.split(","))}
    context = ssl.create_default_context(cafile=cfg.kafka_ssl_cafile or None) \
        if cfg.kafka_security_protocol in ("SSL", "SASL_SSL") else None
    if cfg.kafka_security_protocol.startswith("SASL"):
        opts["broker_credentials"] = faust.SASLCredentials(
            username=cfg.kafka_sasl_username, password=cfg.kafka_sasl_password,
            mechanism=cfg.kafka_sasl_mechanism or "PLAIN", ssl_context=context)
    elif context is not None:
        opts["broker_credentials"] = faust.SSLCredentials(context)
    return opts


def use_fetch_max_wait(seconds: float) -> None:
    """Make Faust's consumers wait at most ``seconds`` per fetch (Faust hard-codes 1.5 s).

    Faust builds its aiokafka consumer itself, so the only hook is its consumer-thread class; the
    override is process-wide, which is what a worker process wants."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    base = faust_aiokafka.AIOKafkaConsumerThread
    create = getattr(base, "_musicrec_create", base._create_worker_consumer)

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = max(1, int(seconds * 1000))  # read by aiokafka's start()
        return consumer

    base._musicrec_create = create  # type: ignore[attr-defined]
    base._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def build_app(settings: Settings, processor: BatchProcessor) -> faust.App:
    cfg = settings.stream
    use_fetch_max_wait(cfg.fetch_max_wait)
    app = faust.App(
        cfg.app_id, **faust_broker_options(cfg), value_serializer="raw", key_serializer="raw",
        store="memory://", web_enabled=False, topic_partitions=cfg.partitions,
        broker_session_timeout=cfg.session_timeout, broker_heartbeat_interval=max(cfg.session_timeout / 10, 0.5),
        broker_rebalance_timeout=cfg.session_timeout, consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4096, 2 * cfg.batch_size), producer_linger=0.005,
        producer_max_request_size=DLQ_MAX_REQUEST_BYTES,
        datadir=str(settings.stream.data_dir) + "/faust",
    )
    events_topic = app.topic(cfg.events_topic, key_type=bytes, value_type=bytes, partitions=cfg.partitions)
    songs_topic = app.topic(cfg.songs_topic, key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(cfg.dlq_topic, key_type=bytes, value_type=bytes)

    async def send_dead(d: DeadLetter) -> Any:
        try:
            return await dlq_topic.send(key=d.key, value=d.value or b"", headers=d.headers())
        except ProducerSendError as exc:
            if not _too_large(exc):
                raise
            # larger than this producer may send: the reason and a 64 KiB head still go out
            log.warning("dead letter from %s is too large for the DLQ (%s); sending it truncated", d.source, exc)
            t = d.truncated()
            return await dlq_topic.send(key=t.key, value=t.value or b"", headers=t.headers())

    async def dead_letters(dead: list[DeadLetter]) -> None:
        futures = [(d, await send_dead(d)) for d in dead]
        for d, fut in futures:
            try:
                await fut  # delivered before the batch is acked: nothing refused is lost
            except KafkaError as exc:
                if not _too_large(exc):
                    raise
                log.warning("the broker refused dead letter from %s as too large; sending it truncated", d.source)
                await (await send_dead(d.truncated()))
        processor.dead_lettered(len(dead))

    # Batches run on the event loop itself, not in a helper thread: a second thread gains little
    # (Faust's per-message work holds the GIL) and costs a lot, since every numpy call that drops
    # the GIL then waits up to a switch interval to get it back (batches went from ~15 ms to
    # ~150 ms at 3k events/s, see benchmarks/README.md).
    async def with_redis_retry(what: str, fn: Any, *args: Any) -> Any:
        # Redis down: keep retrying instead of acking; consumption pauses, nothing is committed
        delay = 0.2
        while True:
            try:
                return fn(*args)
            except ServiceUnavailable as exc:
                log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)

    @app.agent(events_topic)
    async def listen(stream: faust.StreamT) -> None:
        async for events in stream.take_events(cfg.batch_size, within=cfg.batch_within):  # type: ignore[attr-defined]
            messages = [Message(e.message.key, e.message.value, e.message.topic, e.message.partition,
                                e.message.offset, e.message.timestamp) for e in events]
            dead = await with_redis_retry("processing a batch", processor.process, messages)
            if dead:
                await dead_letters(dead)

    @app.agent(songs_topic)
    async def catalog(stream: faust.StreamT) -> None:
        async for events in stream.take_events(500, within=0.05):  # type: ignore[attr-defined]
            messages = [Message(e.message.key, e.message.value, e.message.topic, e.message.partition,
                                e.message.offset, e.message.timestamp) for e in events]
            # stored once per group (and dead-lettered once); indexing is the broadcast's job below
            dead = processor.add_songs(messages, index=False)
            if dead:
                await dead_letters(dead)

    async def index_songs(messages: list[Message]) -> None:
        processor.add_songs(messages, store=False)  # refusals are the catalog agent's to report

    @app.task
    async def catalog_replica() -> None:
        await follow_catalog(cfg, index_songs)

    @app.timer(cfg.model_poll)
    async def watch_model() -> None:
        loop = asyncio.get_running_loop()
        try:
            version = processor.published_version()
            test = processor.wanted_test()
        except ServiceUnavailable as exc:
            log.warning("cannot check for a new model: %s", exc)
            return
        if test is None and processor.ab is not None:
            processor.stop_test()
        elif test is not None and (processor.ab is None or processor.ab.test.salt != test.salt):
            treatment = await loop.run_in_executor(None, processor.prepare_test, test)
            if treatment is not None:
                processor.start_test(test, treatment)
        if version is not None and version != processor.model.holder.version:
            # loading and checking happen in another thread, next to batches; the swap itself (one
            # reference under a lock) runs on the loop, between two batches
            candidate = await loop.run_in_executor(None, processor.prepare_swap, version)
            if candidate is not None and processor.install(candidate):
                await with_redis_retry("refreshing lists after a swap", processor.refresh_active)

    @app.timer(30.0)
    async def compact_log() -> None:
        # merging only touches this worker's finished segments, so it can run next to batches
        merged = await asyncio.get_running_loop().run_in_executor(None, processor.compact_log)
        if merged:
            log.info("merged %d log segments", merged)

    @app.timer(2.0)
    async def stats() -> None:
        try:
            processor.publish_stats()
        except ServiceUnavailable as exc:
            log.warning("cannot publish stats: %s", exc)

    return app


def run_worker(settings: Settings, processor: BatchProcessor, loglevel: str = "warning") -> None:
    """Run until SIGINT/SIGTERM."""
    app = build_app(settings, processor)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
