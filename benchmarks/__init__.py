"""Benchmarks: programs that print figures (a table, and JSON with ``--json``), never timed tests.

Each benchmark module exposes ``run(console, quick: bool) -> dict`` returning its figures; every speed
figure sits next to a reference measured in the same run (machines here are noisy).
"""

from __future__ import annotations

import importlib
import json
import platform
import subprocess
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


def cpu_model() -> str | None:
    """The CPU's model name (Linux): hosts of the same core count differ ~2x in speed here."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def code() -> dict[str, Any]:
    """Which code ran: the tree the benchmarks were imported from and, in a git checkout, its commit
    and whether tracked files differ from it. A worker the benchmark starts runs the same tree (same
    interpreter, working directory and environment). ``python -m`` puts the working directory first
    on ``sys.path``, ahead of PYTHONPATH and an editable install, so comparing two checkouts means
    running each from its own directory; this field shows which one a figure came from."""
    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"path": str(root)}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return out  # no git here: the path alone
    if head.returncode == 0 and status.returncode == 0:
        out.update(commit=head.stdout.strip(), modified=bool(status.stdout.strip()))
    return out


def machine() -> dict[str, Any]:
    import os

    return {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu_model": cpu_model(), "machine": platform.machine(),
            "system": platform.system(), "code": code()}


def run_benchmark(name: str, json_out: Path | None, console: Console, quick: bool = False) -> dict[str, Any]:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(sorted(BENCHMARKS)) or 'none yet'}")
    module = importlib.import_module(BENCHMARKS[name])
    host = machine()
    ran = host["code"]
    console.print(f"code: {ran['path']}" + (f" @ {ran['commit'][:10]}" if "commit" in ran else "")
                  + (" (modified)" if ran.get("modified") else "") + f"; CPU: {host['cpu_model'] or 'unknown'}",
                  markup=False, highlight=False)
    figures = {"benchmark": name, "machine": host, **module.run(console, quick)}
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures, indent=2, default=float))
        console.print(f"figures written to {json_out}")
    return figures
