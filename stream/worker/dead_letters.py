"""Sending refused messages to the dead-letter topic before their batch is acknowledged."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faust.exceptions import ProducerSendError

from stream.worker.messages import DeadLetter

log = logging.getLogger("musicrec.worker")


def _too_large(exc: BaseException | None) -> bool:
    """Whether a send failed because the record is too large (for the producer or the broker)."""
    while exc is not None:
        if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError) or "TooLarge" in type(exc).__name__:
            return True
        exc = exc.__cause__
    return False


class DeadLetterSender:
    def __init__(self, topic: Any) -> None:
        self.topic = topic  # a Faust topic

    async def _send(self, d: DeadLetter) -> Any:
        try:
            return await self.topic.send(key=d.key, value=d.value or b"", headers=d.headers())
        except ProducerSendError as exc:
            if not _too_large(exc):
                raise
            # larger than this producer may send: the reason and a 64 KiB head still go out
            log.warning("dead letter from %s is too large for the DLQ (%s); sending it truncated", d.source, exc)
            t = d.truncated()
            return await self.topic.send(key=t.key, value=t.value or b"", headers=t.headers())

    async def send(self, dead: list[DeadLetter]) -> None:
        """Produce every dead letter and wait until the broker has each: nothing refused is lost."""
        futures = [(d, await self._send(d)) for d in dead]
        for d, fut in futures:
            try:
                await fut
            except KafkaError as exc:
                if not _too_large(exc):
                    raise
                log.warning("the broker refused dead letter from %s as too large; sending it truncated", d.source)
                await (await self._send(d.truncated()))
