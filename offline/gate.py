"""The evaluation gate of a retrain: a candidate is published only if it is not worse than what serves.

Both versions are scored on the same slice, the one the candidate never trained on (each user's
most recent first play, ``EventLog.holdout``), through the serving code (``online_models.scoring``)
as the worker would serve them: user vectors folded in from the user's training history against
each version's item factors (for a SASRec version: its state after the user's latest training
plays, in order), index retrieval, NeuMF's second stage for the users it knows.
Figures: HR@k and NDCG@k against sampled negatives (NCF paper protocol) and full-catalog recall@k;
the gate holds on both HR@k and recall@k, because sampled and full-catalogue metrics can rank two
models in opposite orders (Krichene & Rendle 2020).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index_manager.artifacts import ModelArtifact
from index_manager.keys import song_keys
from online_models.config import OnlineConfig
from online_models.features import index_candidates
from online_models.interactions import Interactions
from online_models.metrics import sampled_hit_ndcg
from online_models.ranking import mask_seen, sample_unseen, seen_keys, take_top
from online_models.scoring import RERANK_DEPTH, fold_in_rows, rerank
from online_models.serving import ServingModel

NEGATIVES = 99
_USERS_PER_CHUNK = 1024  # bounds the (users x candidates) blocks of the full-catalog ranking


@dataclass(frozen=True)
class Slice:
    """Training history and held-out songs shared by every version under comparison."""

    history: Interactions
    users: np.ndarray
    songs: np.ndarray
    negatives: np.ndarray  # (U, NEGATIVES) songs each user never touched
    sequences: np.ndarray | None = None  # (U, L) keys of each user's latest training plays, -1 padded


def make_slice(history: Interactions, users: np.ndarray, songs: np.ndarray, seed: int = 0,
               negatives: int = NEGATIVES, sequences: np.ndarray | None = None,
               catalog: np.ndarray | None = None) -> Slice:
    """Sample each user's negatives uniformly from songs they never touched (history or held out).
    Users who touched so much of the catalog that fewer than ``negatives`` songs remain are left out.
    ``sequences`` (one row per user: song keys of their latest training plays in order, right-aligned,
    -1 padded) is what a sequence model is scored on. ``catalog`` is every song of the training rows
    when ``history`` holds only the slice users' rows (an engine that keeps the rest elsewhere); by
    default it is ``history``'s songs."""
    if sequences is not None and (np.ndim(sequences) != 2 or len(sequences) != len(users)):
        raise ValueError(f"sequences must be a (users, length) array with one row per user, got "
                         f"{np.shape(sequences)} for {len(users)} users")
    trained = history.song_ids if catalog is None else np.asarray(catalog, object)
    catalog = np.unique(np.concatenate([trained, songs]).astype(str)).astype(object)
    if len(catalog) <= negatives:
        raise ValueError(f"the catalog has only {len(catalog)} songs; need more than {negatives} to sample")
    users = np.asarray(users, object)
    user_row = {u: i for i, u in enumerate(users.tolist())}
    in_slice = np.array([u in user_row for u in history.user_ids.tolist()], bool)
    touched_users = np.concatenate([np.arange(len(users)),
                                    [user_row[u] for u in history.user_ids[in_slice].tolist()]]).astype(np.int64)
    names = np.concatenate([songs, history.song_ids[in_slice]]).astype(str)
    touched_songs = np.searchsorted(catalog.astype(str), names)
    seen = seen_keys(touched_users, touched_songs, len(catalog))
    free = len(catalog) - np.bincount(seen // len(catalog), minlength=len(users))
    ok = free >= negatives
    if not ok.any():
        raise ValueError(f"no user has {negatives} untouched songs to sample negatives from")
    if not ok.all():
        return make_slice(history, users[ok], songs[ok], seed, negatives,
                          None if sequences is None else sequences[ok], trained)
    picked = sample_unseen(np.random.default_rng(seed), np.arange(len(users)), negatives, len(catalog), seen)
    return Slice(history, users, np.asarray(songs, object), catalog[picked], sequences)


def version_metrics(artifact: ModelArtifact, data: Slice, config: OnlineConfig, k: int = 10) -> dict[str, float]:
    """HR@k / NDCG@k against the sampled negatives and full-catalog recall@k of one version."""
    model = ServingModel.from_artifact(artifact, artifact.version or "candidate")
    if "alpha" not in artifact.params or "regularization" not in artifact.params:
        model.alpha, model.regularization = config.alpha, config.regularization
    index = model.index
    user_slot = {u: i for i, u in enumerate(data.users.tolist())}
    slots = np.array([user_slot.get(u, -1) for u in data.history.user_ids], dtype=np.int64)
    keys = song_keys(data.history.song_ids)
    rows = index.rows(keys)
    use = (slots >= 0) & (rows >= 0)
    if model.sequence is not None:
        if data.sequences is None:
            raise ValueError(f"version {model.version} is a sequence model: the slice needs the users' plays in order")
        vectors, _ = model.sequence.vectors(index, data.sequences)
    else:
        vectors = fold_in_rows(model, slots[use], rows[use], data.history.pos[use], data.history.neg[use],
                               len(data.users))
    # NeuMF scores the users it was trained on, as it re-ranks them when serving
    ranker = model.ranker
    ranked = np.flatnonzero(ranker.user_rows(data.users) >= 0) if ranker is not None else np.empty(0, np.int64)

    cands = np.concatenate([data.songs[:, None], data.negatives], axis=1)
    crow = index.rows(song_keys(cands.ravel())).reshape(cands.shape)
    scores = np.einsum("uf,ucf->uc", vectors, index.factors[np.maximum(crow, 0)]).astype(np.float64)
    if ranker is not None and len(ranked):
        scores[ranked] = ranker.score(ranker.user_rows(data.users[ranked]),
                                      np.maximum(ranker.song_rows(cands[ranked]), 0))
    scores[crow < 0] = -np.inf  # a song the version does not know cannot be recommended by it
    hit, ndcg = sampled_hit_ndcg(scores, k)

    depth = max(k, RERANK_DEPTH) if ranker is not None else k
    seen_slots, seen_keys_ = slots[use], keys[use]
    target = song_keys(data.songs)
    hits = 0
    for start in range(0, len(data.users), _USERS_PER_CHUNK):
        part = np.arange(start, min(start + _USERS_PER_CHUNK, len(data.users)))
        sel = (seen_slots >= start) & (seen_slots < start + len(part))
        seen_n = np.bincount(seen_slots[sel] - start, minlength=len(part))
        cand_k, cand_s, _ = index_candidates(model, vectors[part], depth + int(seen_n.max(initial=0)))
        allowed = ~mask_seen(cand_k, seen_slots[sel] - start, seen_keys_[sel])
        top_k, top_s = take_top(cand_k, cand_s, allowed, depth)
        top_k, _ = rerank(model, data.users[part], top_k, top_s, np.flatnonzero(np.isin(part, ranked)), depth)
        hits += int((top_k[:, :k] == target[part, None]).any(axis=1).sum())
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
    """Publish unless the candidate's sampled HR@k or its full-catalogue recall@k is below the served
    version's by more than ``tolerance`` (absolute): a candidate that wins one and loses the other
    is refused, since the two protocols can disagree."""
    if served is None:
        return Decision(True, "no version is being served", candidate)
    checks = {key: {"candidate": candidate[key], "served": served[key],
                    "ok": candidate[key] + tolerance >= served[key]} for key in (f"hr@{k}", f"recall@{k}")}
    figures = ", ".join(f"{key} {c['candidate']:.4f} vs served {c['served']:.4f}" for key, c in checks.items())
    worse = [key for key, c in checks.items() if not c["ok"]]
    if not worse:
        return Decision(True, f"{figures} (tolerance {tolerance})", candidate, served, {"checks": checks})
    return Decision(False, f"{' and '.join(worse)} worse than served by more than {tolerance}: {figures}",
                    candidate, served, {"checks": checks})
