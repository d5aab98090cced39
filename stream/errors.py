"""Errors of the edges: a setting that cannot work, a service that cannot be reached.

Library exceptions (Kafka, Redis) are translated into these at the boundary with ``raise ... from
exc``, so the CLI prints one line and the API answers 503 instead of a traceback.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing, malformed or inconsistent."""


class ServiceUnavailable(Exception):
    """Kafka or Redis cannot be reached (after retries)."""
