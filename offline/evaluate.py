"""``musicrec evaluate``: offline evaluation protocols on a generic event file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from online_models.config import OnlineConfig

PROTOCOLS = ("loo", "prequential")


def evaluate_file(path: Path, protocol: str, models: list[str] | None, k: int, train_fraction: float,
                  console: Console, plot: Path | None = None, skip_bad: bool = False, tune: bool = False,
                  config: OnlineConfig | None = None) -> dict[str, Any]:
    """Run one protocol and return its JSON-ready result.

    With ``tune`` (prequential only), hyper-parameters are first chosen by coordinate descent on the
    training part of the timeline alone (``offline.tune``); the replayed part is never seen."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol == "loo":
        from offline.eventfile import read_event_file
        from offline.loo import DEFAULT_MODELS, evaluate_loo

        events, skipped = read_event_file(path, skip_bad=skip_bad)
        if skipped:
            console.print(f"[yellow]{skipped} bad rows skipped[/yellow]")
        return evaluate_loo(events, list(models or DEFAULT_MODELS), k=k, console=console)
    from offline.eventfile import read_event_file
    from offline.prequential import plot_series, prequential

    events, skipped = read_event_file(path, skip_bad=skip_bad)
    if skipped:
        console.print(f"[yellow]{skipped} bad rows skipped[/yellow]")
    config = config or OnlineConfig()
    tuned: dict[str, Any] | None = None
    if tune:
        from offline.tune import tune as run_tune

        tuned = run_tune(events, early_fraction=train_fraction, k=k, base=config, console=console)
        config = OnlineConfig(**tuned["best"])
    result = prequential(events, models, k=k, train_fraction=train_fraction, config=config, console=console)
    result["config"] = asdict(config)
    if tuned is not None:
        result["tuning"] = {key: tuned[key] for key in ("early_events", "best", "best_score", "reference")}
    if plot is not None:
        console.print(f"plot written to {plot_series(result, plot)}")
    return result
