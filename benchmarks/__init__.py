"""Benchmarks: programs that print figures (a table, and JSON with ``--json``), never timed tests.

Each benchmark module exposes ``run(console, quick: bool) -> dict`` returning its figures; every speed
figure sits next to a reference measured in the same run (machines here are noisy).
"""

from __future__ import annotations

import importlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console

# name -> module path; each module defines run(console, quick) -> dict
BENCHMARKS: dict[str, str] = {
    "ingest": "benchmarks.ingest",
    "freshness": "benchmarks.freshness",
    "index": "benchmarks.index",
    "serve": "benchmarks.serve",
    "scale": "benchmarks.scale",
    "train": "benchmarks.train",
    "restore": "benchmarks.restore",
}


def machine() -> dict[str, Any]:
    import os

    return {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}


def run_benchmark(name: str, json_out: Path | None, console: Console, quick: bool = False) -> dict[str, Any]:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(sorted(BENCHMARKS)) or 'none yet'}")
    module = importlib.import_module(BENCHMARKS[name])
    figures = {"benchmark": name, "machine": machine(), **module.run(console, quick)}
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures, indent=2, default=float))
        console.print(f"figures written to {json_out}")
    return figures
