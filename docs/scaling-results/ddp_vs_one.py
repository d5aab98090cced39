"""Distributed vs single-process NeuMF/SASRec retrains, as `musicrec retrain --workers N --no-publish` runs them.

Usage, from the repository root:
    python docs/scaling-results/ddp_vs_one.py LOG_DIR VERSIONS_DIR ncf|sasrec 1,2 [EPOCHS, 0 = default] [SEED]
Appends one JSON line per run to ./ddp.jsonl.
"""
import json
import sys
import time

from offline.config import TrainConfig
from offline.eventlog import EventLog
from offline.retrain import retrain
from online_models.config import OnlineConfig
from online_models.ncf_config import NCFConfig
from online_models.sasrec_spec import SASRecConfig

log = EventLog(sys.argv[1])
out, model = sys.argv[2], sys.argv[3]
epochs = int(sys.argv[5]) if len(sys.argv) > 5 else 0
seed = int(sys.argv[6]) if len(sys.argv) > 6 else 0
ncf = NCFConfig(epochs=epochs) if epochs and model == "ncf" else NCFConfig()
sas = SASRecConfig(**({"epochs": epochs} if epochs else {}), seed=seed)
for w in [int(x) for x in sys.argv[4].split(",")]:
    t = time.time()
    r = retrain(log, out, OnlineConfig(), TrainConfig(model=model, workers=w), ncf_config=ncf, sasrec_config=sas)
    m = r.artifact.metrics
    rec = {"model": model, "seed": seed, "workers": w, "s": time.time() - t, **r.decision.candidate,
           "version": r.version, "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
           "epoch_s": [h["seconds"] for h in m.get("history", [])],
           "params": {k: v for k, v in r.artifact.params.items() if k != "config"}}
    print(json.dumps(rec), flush=True)
    with open("ddp.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
