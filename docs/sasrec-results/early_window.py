"""Hyper-parameter selection on the early part of a stream: fit on the first 25%, replay the next 25%.

Usage: python early_window.py EVENT_FILE OUT.jsonl '[{"loss": "bce"}, ...]' (one SASRecConfig override per run).
"""
import json
import sys
import time

import numpy as np

from offline.eventfile import read_event_file
from offline.prequential import replay_model, split
from online_models.config import OnlineConfig
from online_models.sasrec import SASRecConfig
from online_models.sequence import SASRecRecommender

path, out = sys.argv[1], sys.argv[2]
variants = json.loads(sys.argv[3])
events, _ = read_event_file(path)
ordered = events.sorted_by_time()
early = ordered.take(slice(0, len(ordered) // 2))
train, test = split(early, 0.5)
for v in variants:
    cfg = SASRecConfig(**v)
    model = SASRecRecommender(cfg, OnlineConfig())
    t = time.time()
    run = replay_model(model, train, test, 10, 256)
    m = model.model.metrics
    rec = {"file": path, "variant": v, "recall@10": float(run.hits.mean()), "ndcg@10": float(run.gains.mean()),
           "fit_s": run.fit_s, "replay_s": run.replay_s, "best_epoch": m["best_epoch"], "val_hr": m["val_hr@10"],
           "epoch_s": float(np.mean([h["seconds"] for h in m["history"]]))}
    print(json.dumps(rec), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
