"""Errors of the offline jobs' engines: the message is for the user, not a traceback."""

from __future__ import annotations


class EngineUnavailable(Exception):
    """A training engine (Spark, torch.distributed) is missing, could not start, or one of its
    processes failed."""
