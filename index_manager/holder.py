"""Swap by reference: one ``(model, version)`` pair replaced under a lock.

Readers take the pair once per request (or batch) with :meth:`ModelHolder.peek` or
:meth:`ModelHolder.get` and use that pair to the end, so a swap in the middle of a request can never
mix two versions. A candidate is built and checked aside by the caller; :meth:`swap` only refuses
versions that would move time backwards.
"""

from __future__ import annotations

import threading
from typing import Generic, NamedTuple, TypeVar

M = TypeVar("M")


class NoModel(Exception):
    """No model version has been loaded yet."""


class Served(NamedTuple, Generic[M]):
    """One model and the version it was loaded from, read together."""

    model: M
    version: str


class ModelHolder(Generic[M]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: Served[M] | None = None

    def get(self) -> Served[M]:
        served = self._served  # one atomic read; no lock needed to read a reference
        if served is None:
            raise NoModel("no model version is loaded yet")
        return served

    def peek(self) -> Served[M] | None:
        return self._served

    @property
    def version(self) -> str | None:
        served = self._served
        return None if served is None else served.version

    def swap(self, model: M, version: str) -> bool:
        """Install ``(model, version)`` if it is newer than the current one; returns whether it did."""
        with self._lock:
            if self._served is not None and version <= self._served.version:
                return False
            self._served = Served(model, version)
            return True
