"""Retrain timings and gate figures: an event file into a fresh log, `retrain` ALS, then SASRec gated
against it (the code `musicrec retrain --model sasrec` runs, without the Redis publish).

Usage: python retrain_timing.py EVENT_FILE WORK_DIR OUT.jsonl
"""
import json
import sys
import time

from offline.config import TrainConfig
from offline.eventlog import EventLog
from offline.retrain import retrain
from online_models.config import OnlineConfig

path, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
log = EventLog(f"{work}/log")
if not log.segments():
    log.import_file(path)
config = OnlineConfig()
t = time.time()
als = retrain(log, f"{work}/versions", config, TrainConfig(model="als"))
als_s = time.time() - t
t = time.time()
sasrec = retrain(log, f"{work}/versions", config, TrainConfig(model="sasrec"), served=als.artifact)
sasrec_s = time.time() - t
rec = {"file": path, "n_events": sasrec.n_events, "als_s": als_s, "sasrec_s": sasrec_s,
       "sasrec_epochs": sasrec.artifact.metrics.get("epochs_run"),
       "best_epoch": sasrec.artifact.metrics.get("best_epoch"),
       "als": als.decision.candidate, "sasrec": sasrec.decision.candidate, "gate": sasrec.decision.reason,
       "publish": sasrec.decision.publish}
print(json.dumps(rec), flush=True)
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
