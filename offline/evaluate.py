"""``musicrec evaluate``: offline evaluation protocols on a generic event file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

PROTOCOLS = ("loo", "prequential")


def evaluate_file(path: Path, protocol: str, models: list[str] | None, k: int, train_fraction: float,
                  console: Console, plot: Path | None = None, skip_bad: bool = False) -> dict[str, Any]:
    """Run one protocol and return its JSON-ready result."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    raise NotImplementedError(f"protocol {protocol} is not implemented yet")
