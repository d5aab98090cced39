"""Helpers shared by the benchmarks: timing, percentiles, peak memory, machine load and tables."""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's high-water mark so the next reading covers one benchmark only.

    ``musicrec bench`` runs one benchmark per process, but the smoke tests run several in one pytest
    process; without the reset the later ones would report the earlier ones' peak. Linux only
    (``echo 5 > /proc/self/clear_refs``); returns False where that is not possible.
    """
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> tuple[float, str]:
    """(peak resident set size in MiB, where it came from).

    VmHWM honours :func:`reset_peak_rss`; ``getrusage`` is the portable fallback and covers the
    whole life of the process.
    """
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024.0, "VmHWM (/proc/self/status)"
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux and bytes on macOS
    return (ru / 2**20 if os.uname().sysname == "Darwin" else ru / 1024.0), "getrusage ru_maxrss"


def current_rss_mb() -> float:
    rss = _status_kb("VmRSS")
    return 0.0 if rss is None else rss / 1024.0


def load_average() -> float:
    """1-minute load average: other work on a 2-core machine moves every speed figure."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the elapsed seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


def time_per_call(fn: Callable[[], object], calls: int) -> np.ndarray:
    """Seconds taken by each of ``calls`` calls of ``fn`` (for latency percentiles)."""
    out = np.empty(calls)
    clock = time.perf_counter
    for i in range(calls):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out


def percentiles_ms(seconds: np.ndarray, ps: Sequence[float] = (50, 99)) -> dict[str, float]:
    """``{"p50": ms, "p99": ms}`` of per-call timings given in seconds."""
    values = np.percentile(np.asarray(seconds, dtype=float), list(ps)) * 1000.0
    return {f"p{p:g}": float(v) for p, v in zip(ps, values, strict=True)}


def fmt(value: Any, digits: int = 3) -> str:
    """Short human form for a table cell (the JSON keeps full precision)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                caption: str | None = None) -> None:
    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console.print(table)


def run_context() -> dict[str, Any]:
    """Taken at the start of a benchmark: lets a reader tell a quiet run from a contended one."""
    return {"load_avg_1m_start": load_average(), "peak_rss_reset": reset_peak_rss()}


def finish_context(context: dict[str, Any]) -> dict[str, Any]:
    rss, source = peak_rss()
    return {**context, "load_avg_1m_end": load_average(), "peak_rss_mb": round(rss, 1), "peak_rss_source": source}
