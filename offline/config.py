"""Settings of the retrain job and its evaluation gate, each declared once (type, default, env, doc)."""

from __future__ import annotations

from dataclasses import dataclass

from online_models.config import check_ranges, setting
from online_models.ncf_config import BACKENDS

MODEL_KINDS = ("als", "ncf", "sasrec")
ENGINES = ("local", "spark")


@dataclass(frozen=True)
class TrainConfig:
    model: str = setting("als", "MUSICREC_MODEL", "Model a retrain trains: als, ncf or sasrec.", choices=MODEL_KINDS)
    backend: str = setting("torch", "MUSICREC_NCF_BACKEND", "Training backend of NeuMF and SASRec: torch or mlx (mlx[cpu] runs on Linux).", choices=BACKENDS)
    gate_tolerance: float = setting(0.005, "MUSICREC_GATE_TOLERANCE", "A candidate is published unless its sampled HR@10 or its full-catalogue recall@10 is below the served version's by more than this (absolute).", ge=0)
    gate_users: int = setting(5000, "MUSICREC_GATE_USERS", "Held-out users the gate evaluates (a seeded sample when there are more).", gt=0)
    window_days: float = setting(0.0, "MUSICREC_TRAIN_WINDOW_DAYS", "Train on the last N days of the log only; 0 = all of it.", ge=0)
    threads: int = setting(0, "MUSICREC_TRAIN_THREADS", "Threads of the ALS factorisation in a retrain; 0 = all cores (the worker processes keep one).", ge=0)
    engine: str = setting("local", "MUSICREC_TRAIN_ENGINE", "Where ALS trains: local (implicit, in this process) or spark (Spark MLlib ALS over the same Parquet log; `pip install -e '.[spark]'`).", choices=ENGINES)
    spark_master: str = setting("local[*]", "MUSICREC_SPARK_MASTER", "Spark master URL of `--engine spark` (local[*] = in this machine's JVM; spark://host:7077 = a standalone cluster).")
    workers: int = setting(1, "MUSICREC_TRAIN_WORKERS", "Processes that train NeuMF or SASRec together with torch DistributedDataParallel (gloo on CPU, NCCL on GPUs); 1 = in this process.", gt=0)
    every: str = setting("", "MUSICREC_RETRAIN_EVERY", "Scheduler period for `musicrec retrain --every` (e.g. 30m, 1h, 1d); empty = run once.")

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.every:
            parse_period(self.every)
        if self.engine == "spark" and self.model != "als":
            raise ValueError(f"MUSICREC_TRAIN_ENGINE=spark trains ALS only, not {self.model!r} "
                             "(NeuMF and SASRec scale out with MUSICREC_TRAIN_WORKERS)")
        if self.workers > 1 and self.model == "als":
            raise ValueError("MUSICREC_TRAIN_WORKERS > 1 is for ncf and sasrec; ALS scales out with "
                             "MUSICREC_TRAIN_ENGINE=spark")
        if self.workers > 1 and self.backend != "torch":
            raise ValueError("MUSICREC_TRAIN_WORKERS > 1 needs the torch backend (DistributedDataParallel)")


def parse_period(text: str) -> float:
    """Seconds in '90s', '30m', '1h', '1d' (a bare number means seconds)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"not a period: {text!r} (use e.g. 90s, 30m, 1h, 1d)") from None
    if value <= 0:
        raise ValueError(f"period must be positive: {text!r}")
    return value
