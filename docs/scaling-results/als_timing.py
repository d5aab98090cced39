"""Spark vs in-process ALS on one log: the JVM start, then the two engines alternating, each a full
retrain (SQL, training, gate, version) as `musicrec retrain --no-publish` runs it.

Usage, from the repository root:
    python docs/scaling-results/als_timing.py NAME EVENT_FILE WORK_DIR ROUNDS MASTER
Appends one JSON line per run to ./als_timing.jsonl.
"""
import json
import sys
import time

from offline.config import TrainConfig
from offline.eventlog import EventLog
from offline.retrain import retrain
from offline.spark_als import spark_session
from online_models.config import OnlineConfig

name, src, work, rounds, master = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
log = EventLog(f"{work}/log")
if not log.segments():
    log.import_file(src)
config = OnlineConfig()
t = time.time()
with spark_session(master) as spark:  # retrain reuses this session: its start is timed once
    start_s = time.time() - t
    for r in range(rounds):
        for engine in ("local", "spark"):
            t = time.time()
            res = retrain(log, f"{work}/versions", config, TrainConfig(engine=engine, spark_master=master))
            rec = {"log": name, "round": r, "engine": engine, "master": master, "spark_start_s": start_s,
                   "retrain_s": time.time() - t, "n_events": res.n_events, **res.decision.candidate,
                   "version": res.version}
            print(json.dumps(rec), flush=True)
            with open("als_timing.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
