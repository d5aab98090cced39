"""What makes a listening event valid: the limits and field rules of the event contract, defined once.

The wire parser (``stream.events``) and the event-file reader (``offline.eventfile``) both apply
these, so a row the worker would refuse never gets into the log by import, and a file that imports
replays without a refusal. Each rule returns the reason a value is refused, or None.
"""

from __future__ import annotations

import math

MAX_ID_CHARS = 256
MAX_FUTURE_S = 86400.0  # timestamps may run at most a day ahead of the receiver's clock
MAX_MS_PLAYED = 24 * 3600 * 1000
# Unicode's control characters (category Cc): C0, DEL and C1 (U+0080..U+009F, e.g. NEL and CSI)
_CONTROL = frozenset({chr(c) for c in range(32)} | {"\x7f"} | {chr(c) for c in range(0x80, 0xA0)})


def text_problem(value: str, name: str) -> str | None:
    """A lone UTF-16 surrogate is valid in JSON ("\\ud800") but no character: neither the Parquet
    log nor a Redis key can store it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{name} contains a lone surrogate (\\u{ord(value[exc.start]):04x})"
    return None


def id_problem(value: object, name: str) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {type(value).__name__}"
    if not value or value.strip() == "":
        return f"{name} is empty"
    if len(value) > MAX_ID_CHARS:
        return f"{name} is longer than {MAX_ID_CHARS} characters"
    if not _CONTROL.isdisjoint(value):
        return f"{name} contains control characters"
    return text_problem(value, name)


def finite(value: object) -> float | None:
    """The value as a finite float, or None (bools, non-numbers, NaN, infinities, huge integers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer literal beyond float range
        return None
    return f if math.isfinite(f) else None


def ts_problem(ts: float | None, now: float) -> str | None:
    """``ts`` as :func:`finite` returned it (None: not a finite number)."""
    if ts is None:
        return "ts is not finite"
    if ts < 0:
        return "ts is negative"
    if ts > now + MAX_FUTURE_S:
        return "ts is more than a day in the future"
    return None


def ms_played_problem(ms: float | None) -> str | None:
    """``ms_played`` as :func:`finite` returned it (None: not a finite number)."""
    if ms is None:
        return "ms_played must be an integer or null"
    if ms < 0 or ms > MAX_MS_PLAYED:
        return f"ms_played must be within 0..{MAX_MS_PLAYED}"
    return None
