"""What the worker reads from Kafka and what it sends back: records in, dead letters out."""

from __future__ import annotations

from dataclasses import dataclass

from stream.events import MAX_MESSAGE_BYTES

REASON_HEADER = "x-musicrec-reason"
SOURCE_HEADER = "x-musicrec-source"
TRUNCATED_HEADER = "x-musicrec-truncated"


@dataclass
class Message:
    """The parts of a Kafka record the worker needs."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: float  # producer's CreateTime, seconds

    @property
    def source(self) -> str:
        """``topic/partition/offset``: where the record is, the same on every redelivery."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass
class DeadLetter:
    """A refused message: its original bytes, the reason and where it came from."""

    key: bytes | None
    value: bytes | None
    reason: str
    source: str
    truncated_from: int | None = None  # original value size when the value had to be cut

    def headers(self) -> list[tuple[str, bytes]]:
        out = [(REASON_HEADER, self.reason.encode("utf-8")), (SOURCE_HEADER, self.source.encode("utf-8"))]
        if self.truncated_from is not None:
            out.append((TRUNCATED_HEADER, str(self.truncated_from).encode()))
        return out

    def truncated(self, limit: int = MAX_MESSAGE_BYTES) -> DeadLetter:
        """A copy small enough for any dead-letter topic (when the broker refuses the original)."""
        value = self.value or b""
        return DeadLetter(None if self.key is None else self.key[:1024], value[:limit], self.reason, self.source,
                          len(value))
