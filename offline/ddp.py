"""NeuMF and SASRec trained by several processes with torch's DistributedDataParallel
(``musicrec retrain --model ncf|sasrec --workers N``).

The retrain job writes the training input to a private directory (Parquet and JSON, no pickle) and
starts ``torchrun --standalone --nproc-per-node N -m offline.ddp KIND DIR``: torch's own launcher
and rendezvous, so the same module runs across machines under ``torchrun --nnodes``. Each process
runs the ordinary training loop (``train_ncf`` / ``train_sasrec``) with a
:class:`~online_models.sharding.Shard`: it samples only its part of each epoch, and DDP averages the
gradients of every step. Collectives go over gloo for CPU tensors and NCCL for CUDA tensors when GPUs
are present (the backends train on CPU today). Rank 0 writes the one version directory, in the
existing layout; the job loads it with its checksums and gates it like any other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index_manager.artifacts import ModelArtifact, list_versions, load_artifact, save_artifact
from offline.errors import EngineUnavailable
from offline.event_table import arrow_to_batch, batch_to_arrow
from online_models.batch import EventBatch
from online_models.interactions import Interactions
from online_models.ncf_config import NCFConfig
from online_models.sasrec_spec import SASRecConfig

KINDS = ("ncf", "sasrec")
_INPUT = "input.parquet"
_SPEC = "spec.json"
_OUT = "out"
_LOG_TAIL = 2000


def train_distributed(kind: str, workers: int, data: Interactions | EventBatch, config: NCFConfig | SASRecConfig,
                      trained_on: dict[str, Any] | None = None, show_progress: bool = False) -> ModelArtifact:
    """Train ``kind`` over ``workers`` processes on this machine; the version rank 0 wrote."""
    if kind not in KINDS:
        raise ValueError(f"data-parallel training is for {' and '.join(KINDS)}, not {kind!r}")
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    with tempfile.TemporaryDirectory(prefix="musicrec-ddp-") as tmp:
        work = Path(tmp)
        if isinstance(data, Interactions):
            table = pa.table({"user_id": pa.array(data.user_ids.tolist(), pa.string()),
                              "song_id": pa.array(data.song_ids.tolist(), pa.string()),
                              "pos": data.pos, "neg": data.neg})
        else:
            table = batch_to_arrow(data, ingested_at=0.0)
        pq.write_table(table, work / _INPUT)
        (work / _SPEC).write_text(json.dumps({"config": asdict(config), "trained_on": trained_on or {},
                                              "progress": show_progress}))
        _launch(kind, work, workers, show_progress)
        versions = list_versions(work / _OUT)
        if len(versions) != 1:
            raise EngineUnavailable(f"distributed {kind} training left {len(versions)} versions, expected 1")
        return load_artifact(work / _OUT, versions[0])


def _launch(kind: str, work: Path, workers: int, show_progress: bool) -> None:
    root = str(Path(__file__).resolve().parents[1])  # this checkout's packages win in the ranks too
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
           "-m", "offline.ddp", kind, str(work)]
    log_path = work / "ranks.log"
    with open(log_path, "wb") as log:
        out = None if show_progress else log
        try:
            proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, check=False)
        except OSError as exc:
            raise EngineUnavailable(f"could not start torchrun: {exc}") from exc
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-_LOG_TAIL:]
        raise EngineUnavailable(f"distributed {kind} training over {workers} processes failed "
                                f"(torchrun exit {proc.returncode}){': ' + tail if tail else ''}")


def _shard() -> Any:
    """This process's :class:`Shard` over the process group torchrun set up (RANK, WORLD_SIZE, ...)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from online_models.sharding import Shard

    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    world = dist.get_world_size()

    def all_max(n: int) -> int:
        t = torch.tensor([n], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def all_mean(x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / world

    return Shard(dist.get_rank(), world, DistributedDataParallel, all_max, all_mean)


def main(argv: list[str] | None = None) -> None:
    """One rank: ``python -m offline.ddp KIND DIR``, started by torchrun."""
    import torch.distributed as dist

    from online_models.ncf_train import train_ncf
    from online_models.sasrec_train import sasrec_artifact, train_sasrec

    kind, work_dir = argv or sys.argv[1:]
    work = Path(work_dir)
    spec = json.loads((work / _SPEC).read_text())
    table = pq.read_table(work / _INPUT)
    shard = _shard()
    try:
        progress = bool(spec["progress"]) and shard.rank == 0
        artifact: ModelArtifact | None = None
        if kind == "ncf":
            rows = Interactions(table.column("user_id").to_numpy(zero_copy_only=False),
                                table.column("song_id").to_numpy(zero_copy_only=False),
                                table.column("pos").to_numpy(), table.column("neg").to_numpy())
            artifact = train_ncf(rows, NCFConfig(**spec["config"]), "torch", show_progress=progress,
                                 trained_on=spec["trained_on"], shard=shard)
        elif kind == "sasrec":
            events = arrow_to_batch(table)
            model = train_sasrec(events, SASRecConfig(**spec["config"]), "torch", show_progress=progress,
                                 shard=shard)
            artifact = sasrec_artifact(model, events, spec["trained_on"]) if shard.rank == 0 else None
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if shard.rank == 0 and artifact is not None:
            artifact.params["workers"] = shard.world
            artifact.params["distributed"] = f"torch DDP ({dist.get_backend()})"
            save_artifact(work / _OUT, artifact)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
