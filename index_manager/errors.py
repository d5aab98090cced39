"""The project's one errors module.

It lives in ``index_manager`` because that is the leaf package every other package may import
without reversing the data flow (stream -> online_models -> index_manager; offline -> index_manager).
Library exceptions (Kafka, Redis, FAISS, DuckDB) are translated into these at the boundary with
``raise ... from exc`` so callers catch one family and users see one kind of message.
"""

from __future__ import annotations


class MusicrecError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(MusicrecError):
    """A setting is missing, malformed or inconsistent."""


class InvalidEvent(MusicrecError, ValueError):
    """A listening or catalog event does not satisfy the contract; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadInputFile(MusicrecError, ValueError):
    """An event/catalog file cannot be read; the message names the file and, if known, the line."""


class ServiceUnavailable(MusicrecError):
    """Kafka or Redis cannot be reached (after retries)."""


class ArtifactError(MusicrecError):
    """A model version on disk is missing, half-written, corrupt or fails its checksum."""


class IndexFailure(MusicrecError):
    """FAISS refused an operation (wrong dimension, bad ids, unsupported removal...)."""


class NoModel(MusicrecError):
    """No model version has been published yet."""
