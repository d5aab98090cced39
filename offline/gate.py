"""The evaluation gate of a retrain: a candidate is published only if it is not worse than what serves.

Both versions are scored on the same slice, the one the candidate never trained on (each user's
most recent first play, ``EventLog.holdout``), the way the worker would serve them: user vectors
folded in from the user's training history against each version's item factors. Figures: HR@k and
NDCG@k against sampled negatives (NCF paper protocol) and full-catalog recall@k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index_manager.artifacts import ModelArtifact
from online_models.config import OnlineConfig
from online_models.foldin import confidences, fold_in
from online_models.interactions import Interactions
from online_models.metrics import sampled_hit_ndcg
from online_models.ncf import NCFScorer
from online_models.online import RERANK_DEPTH

NEGATIVES = 99


@dataclass(frozen=True)
class Slice:
    """Training history and held-out songs shared by every version under comparison."""

    history: Interactions
    users: np.ndarray
    songs: np.ndarray
    negatives: np.ndarray  # (U, NEGATIVES) songs each user never touched


def make_slice(history: Interactions, users: np.ndarray, songs: np.ndarray, seed: int = 0,
               negatives: int = NEGATIVES) -> Slice:
    """Sample each user's negatives uniformly from songs they never touched (history or held out).
    Users who touched so much of the catalog that fewer than ``negatives`` songs remain are left out."""
    catalog = np.unique(np.concatenate([history.song_ids, songs]).astype(str)).astype(object)
    index = {s: i for i, s in enumerate(catalog.tolist())}
    user_row = {u: i for i, u in enumerate(users.tolist())}
    touched: set[tuple[int, int]] = {(user_row[u], index[s]) for u, s in zip(users, songs, strict=True)}
    touched.update((user_row[u], index[s]) for u, s in zip(history.user_ids, history.song_ids, strict=True)
                   if u in user_row)
    if len(catalog) <= negatives:
        raise ValueError(f"the catalog has only {len(catalog)} songs; need more than {negatives} to sample")
    per_user = np.bincount([r for r, _ in touched], minlength=len(users))
    ok = len(catalog) - per_user >= negatives
    if not ok.any():
        raise ValueError(f"no user has {negatives} untouched songs to sample negatives from")
    if not ok.all():
        return make_slice(history, users[ok], songs[ok], seed, negatives)
    rng = np.random.default_rng(seed)
    out = np.empty((len(users), negatives), dtype=np.int64)
    for r in range(len(users)):
        picked: list[int] = []
        while len(picked) < negatives:
            for c in rng.integers(0, len(catalog), 2 * negatives).tolist():
                if (r, c) not in touched and c not in picked:
                    picked.append(c)
                    if len(picked) == negatives:
                        break
        out[r] = picked
    return Slice(history, np.asarray(users, object), np.asarray(songs, object), catalog[out])


def version_metrics(artifact: ModelArtifact, data: Slice, config: OnlineConfig, k: int = 10) -> dict[str, float]:
    """HR@k / NDCG@k against the sampled negatives and full-catalog recall@k of one version."""
    song_row = {s: i for i, s in enumerate(artifact.song_names.tolist())}
    y = artifact.item_factors
    alpha = float(artifact.params.get("alpha", config.alpha))
    reg = float(artifact.params.get("regularization", config.regularization))
    user_slot = {u: i for i, u in enumerate(data.users.tolist())}
    slots = np.array([user_slot.get(u, -1) for u in data.history.user_ids], dtype=np.int64)
    rows = np.array([song_row.get(s, -1) for s in data.history.song_ids], dtype=np.int64)
    use = (slots >= 0) & (rows >= 0)
    conf, pref = confidences(data.history.pos[use], data.history.neg[use], alpha)
    vectors = fold_in(y, y.T.astype(np.float64) @ y, slots[use], rows[use], conf, pref, len(data.users), reg)

    cands = np.concatenate([data.songs[:, None], data.negatives], axis=1)
    crow = np.array([song_row.get(s, -1) for s in cands.ravel()], dtype=np.int64).reshape(cands.shape)
    scores = np.einsum("uf,ucf->uc", vectors, y[np.maximum(crow, 0)]).astype(np.float64)
    ranker = NCFScorer.from_artifact(artifact) if artifact.kind == "ncf" else None
    known = ranker.user_rows(data.users) if ranker is not None else np.full(len(data.users), -1)
    if ranker is not None and (known >= 0).any():  # two-stage serving: NeuMF scores users it knows
        kn = known >= 0
        scores[kn] = ranker.score(known[kn], np.maximum(crow[kn], 0))
    scores[crow < 0] = -np.inf  # a song the version does not know cannot be recommended by it
    hit, ndcg = sampled_hit_ndcg(scores, k)

    seen_slots, seen_rows = slots[use], rows[use]
    target = np.array([song_row.get(s, -1) for s in data.songs], dtype=np.int64)
    hits = 0
    for start in range(0, len(data.users), 1024):  # bounds the (users x catalog) score block
        part = slice(start, start + 1024)
        full = vectors[part] @ y.T
        sel = (seen_slots >= start) & (seen_slots < start + len(full))
        full[seen_slots[sel] - start, seen_rows[sel]] = -np.inf
        depth = RERANK_DEPTH if ranker is not None else k
        top = np.argpartition(-full, min(depth, full.shape[1] - 1), axis=1)[:, :depth]
        kp = known[part]
        if ranker is not None and (kp >= 0).any():
            kn = kp >= 0
            logits = ranker.score(kp[kn], top[kn])
            top[kn] = np.take_along_axis(top[kn], np.argsort(-logits, axis=1, kind="stable"), axis=1)
        top = top[:, :k]
        t = target[part]
        hits += int(((top == t[:, None]) & (t[:, None] >= 0)).any(axis=1).sum())
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(ndcg.mean()),
            f"recall@{k}": hits / max(1, len(data.users)), "users": len(data.users)}


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str
    candidate: dict[str, float]
    served: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"publish": self.publish, "reason": self.reason, "candidate": self.candidate, "served": self.served,
                **self.details}


def decide(candidate: dict[str, float], served: dict[str, float] | None, tolerance: float, k: int = 10) -> Decision:
    """Publish unless the candidate's HR@k is below the served version's by more than ``tolerance``
    (absolute)."""
    key = f"hr@{k}"
    if served is None:
        return Decision(True, "no version is being served", candidate)
    if candidate[key] + tolerance >= served[key]:
        return Decision(True, f"{key} {candidate[key]:.4f} vs served {served[key]:.4f} (tolerance {tolerance})",
                        candidate, served)
    return Decision(False, f"{key} {candidate[key]:.4f} is worse than served {served[key]:.4f} "
                           f"by more than {tolerance}", candidate, served)
