"""SASRec training: windows of every transition, seeded negatives and batch order, early stopping on
validation HR@10, and the versioned artifact a retrain writes.

Everything a backend consumes is computed here in numpy from the seed, so the PyTorch and MLX
backends see identical inputs (``online_models.sasrec`` holds the model side).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from index_manager.artifacts import ModelArtifact
from index_manager.song_index import SongIndex
from online_models.batch import PLAY, EventBatch
from online_models.sasrec import BACKENDS, SASRecModel, Sequences, build_sequences, load_backend, right_aligned
from online_models.sasrec_spec import WEIGHTS_FILE, Batch, SASRecBackend, SASRecConfig, init_weights
from online_models.sharding import Shard, pad_to

_VAL_K = 10
_MIN_VAL_LENGTH = 3  # a validation user keeps >= 2 plays: one input and one training target
_POSITION_BUCKET = 256  # P is rounded up to a multiple of this, so MLX compiles a handful of graphs
_VAL_CHUNK = 256
_ENCODE_CHUNK = 512  # users per numpy forward pass when the artifact's user states are computed


@dataclass(frozen=True)
class _Windows:
    inputs: np.ndarray  # (R, L)
    targets: np.ndarray  # (R, L), 0 where no loss is taken
    user: np.ndarray  # (R,) sequence index of each window


def _windows(seqs: Sequences, length: int) -> _Windows:
    """Every transition s[j] -> s[j+1] exactly once, in right-aligned windows of ``length`` ending at
    each user's newest play (long histories are cut into consecutive windows, not truncated)."""
    n = seqs.lengths
    m = np.maximum(n - 1, 0)  # transitions per user
    chunks = -(-m // length)
    base = np.r_[0, np.cumsum(chunks)]
    user = np.repeat(np.arange(len(n)), m)
    j = np.arange(m.sum()) - np.repeat(np.r_[0, np.cumsum(m)][:-1], m)
    rev = np.repeat(m, m) - 1 - j  # 0 = the user's newest transition
    row = base[user] + rev // length
    col = length - 1 - rev % length
    src = seqs.offsets[user] + j
    inputs = np.zeros((base[-1], length), np.int64)
    targets = np.zeros_like(inputs)
    inputs[row, col] = seqs.flat[src]
    targets[row, col] = seqs.flat[src + 1]
    return _Windows(inputs, targets, np.repeat(np.arange(len(n)), chunks))


def _extra_negatives(rng: np.random.Generator, seqs: Sequences, users: np.ndarray, n: int) -> np.ndarray:
    """(len(users), n) of each user's skipped items, a random subset when there are more; 0 pads."""
    out = np.zeros((len(users), n), np.int64)
    counts = seqs.skip_offsets[users + 1] - seqs.skip_offsets[users]
    if n == 0 or counts.sum() == 0:
        return out
    slot = np.repeat(np.arange(len(users)), counts)
    src = np.concatenate([np.arange(seqs.skip_offsets[u], seqs.skip_offsets[u + 1]) for u in users[counts > 0]])
    order = np.lexsort((rng.random(len(slot)), slot))
    slot, src = slot[order], src[order]
    rank = np.arange(len(slot)) - np.searchsorted(slot, slot)
    keep = rank < n
    out[slot[keep], rank[keep]] = seqs.skip_flat[src[keep]]
    return out


def epoch_batches(rng: np.random.Generator, windows: _Windows, seqs: Sequences, config: SASRecConfig) -> list[Batch]:
    """One epoch of shuffled batches with their negatives, all drawn from ``rng``."""
    n_items = len(seqs.items)
    length = windows.inputs.shape[1]
    order = rng.permutation(len(windows.inputs))
    out = []
    for start in range(0, len(order), config.batch_size):
        idx = order[start:start + config.batch_size]
        inputs = np.zeros((config.batch_size, length), np.int64)  # fixed shape: one compiled MLX graph
        inputs[:len(idx)] = windows.inputs[idx]
        tgt = np.zeros_like(inputs)
        tgt[:len(idx)] = windows.targets[idx]
        flat_pos = np.flatnonzero(tgt.ravel())
        p = len(flat_pos)
        padded = -(-p // _POSITION_BUCKET) * _POSITION_BUCKET
        weights = np.r_[np.ones(p, np.float32), np.zeros(padded - p, np.float32)]
        targets = np.r_[tgt.ravel()[flat_pos], np.ones(padded - p, np.int64)]
        flat_pos = np.r_[flat_pos, np.zeros(padded - p, np.int64)]
        if config.loss == "sampled":
            negatives = rng.integers(1, n_items + 1, config.negatives)
        elif config.loss == "bce":
            negatives = rng.integers(1, n_items + 1, (padded, 1))
            clash = negatives[:, 0] == targets
            # one redraw into the other items: uniform over everything but the target
            negatives[clash, 0] = (targets[clash] + rng.integers(1, max(n_items, 2), int(clash.sum())) - 1) \
                % n_items + 1
        else:
            negatives = np.empty(0, np.int64)
        s = config.skip_negatives if config.loss == "sampled" else 0
        per_row = _extra_negatives(rng, seqs, windows.user[idx], s)
        per_row = np.r_[per_row, np.zeros((config.batch_size - len(idx), s), np.int64)]
        out.append(Batch(inputs, flat_pos, targets, weights, negatives, per_row[flat_pos // length]))
    return out


@dataclass(frozen=True)
class _Validation:
    inputs: np.ndarray  # (V, L)
    targets: np.ndarray  # (V,)
    seen: tuple[np.ndarray, np.ndarray]  # (validation row, item row) pairs to filter


def _split_validation(seqs: Sequences, config: SASRecConfig, rng: np.random.Generator
                      ) -> tuple[Sequences, _Validation]:
    """Hold out the last play of up to ``val_users`` users whose last play is a song new to them (what
    a recommendation that filters heard songs can hit)."""
    n = seqs.lengths
    last = seqs.flat[np.maximum(seqs.offsets[1:] - 1, 0)]
    owner = np.repeat(np.arange(len(n)), n)
    earlier = np.zeros(len(n), bool)
    is_last_pos = np.arange(len(seqs.flat)) == np.repeat(seqs.offsets[1:] - 1, n)
    np.logical_or.at(earlier, owner[~is_last_pos], seqs.flat[~is_last_pos] == last[owner[~is_last_pos]])
    eligible = np.flatnonzero((n >= _MIN_VAL_LENGTH) & ~earlier)
    val = np.sort(rng.choice(eligible, size=min(config.val_users, len(eligible)), replace=False))
    drop = np.zeros(len(seqs.flat), bool)
    drop[seqs.offsets[val + 1] - 1] = True
    flat = seqs.flat[~drop]
    offsets = seqs.offsets - np.r_[0, np.cumsum(np.isin(np.arange(len(n)), val))]
    train = Sequences(seqs.users, seqs.items, offsets, flat, seqs.skip_offsets, seqs.skip_flat)
    hist = [train.of(u) for u in val]
    seen_rows = np.repeat(np.arange(len(val)), [len(x) for x in hist])
    seen_items = np.concatenate(hist) if hist else np.empty(0, np.int64)
    return train, _Validation(right_aligned(hist, config.max_len), last[val], (seen_rows, seen_items))


def _validation_hr(net: SASRecBackend, val: _Validation) -> float:
    if len(val.targets) == 0:
        return float("nan")
    emb = net.weights()["item_emb.weight"]
    hits = 0
    for start in range(0, len(val.targets), _VAL_CHUNK):
        sl = slice(start, start + _VAL_CHUNK)
        scores = net.hidden(val.inputs[sl])[:, -1] @ emb.T
        scores[:, 0] = -np.inf
        rows, items = val.seen
        pick = (rows >= start) & (rows < start + _VAL_CHUNK)
        scores[rows[pick] - start, items[pick]] = -np.inf
        target = scores[np.arange(len(scores)), val.targets[sl]]
        hits += int(((scores > target[:, None]).sum(axis=1) < _VAL_K).sum())
    return hits / len(val.targets)


def _shard_windows(windows: _Windows, shared_rng: np.random.Generator, shard: Shard) -> _Windows:
    """This process's windows of the epoch: every ``world``-th of a shuffle all processes draw alike,
    cycled so that every process gets the same count."""
    order = shared_rng.permutation(len(windows.inputs))
    (order,) = pad_to(-(-len(order) // shard.world) * shard.world, order)
    mine = order[shard.rank::shard.world]
    return _Windows(windows.inputs[mine], windows.targets[mine], windows.user[mine])


def train_sasrec(events: EventBatch, config: SASRecConfig | None = None, backend: str = "torch",
                 show_progress: bool = False, on_epoch: Callable[[dict[str, float | None]], object] | None = None,
                 shard: Shard | None = None) -> SASRecModel:
    """Train on the plays of ``events`` (skips as hard negatives); early stopping on validation HR@10
    of held-out last plays (:func:`_split_validation`), keeping the best epoch's weights.

    With a ``shard`` this is one process of a data-parallel run: each epoch's shuffle of the windows
    is shared, each process takes every ``world``-th window and samples their negatives itself, and
    steps with ``config.batch_size / world`` windows while the wrapped model averages the gradients."""
    config = config or SASRecConfig()
    if backend not in BACKENDS:
        raise ValueError(f"unknown SASRec backend {backend!r}; choose from {', '.join(BACKENDS)}")
    seqs = build_sequences(events, config.repeats)
    if len(seqs.items) == 0 or (seqs.lengths >= 2).sum() == 0:
        raise ValueError("SASRec needs at least one user with two plays")
    init_rng, split_rng, sample_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3))
    train, val = _split_validation(seqs, config, split_rng)
    windows = _windows(train, config.max_len)
    net = load_backend(backend, init_weights(len(seqs.items), config, init_rng), config.heads, config)
    rank_rng = None
    if shard is not None:
        if backend != "torch":
            raise ValueError("data-parallel SASRec training needs the torch backend")
        net.distribute(shard.wrap)  # type: ignore[attr-defined]
        rank_rng = np.random.default_rng(np.random.SeedSequence([config.seed, shard.rank, shard.world]))
    from tqdm import tqdm

    best_hr, best_epoch, best_weights, stale = -1.0, 0, net.weights(), 0
    history: list[dict[str, float | None]] = []
    for epoch in range(config.epochs):
        if shard is None or rank_rng is None:
            batches = epoch_batches(sample_rng, windows, train, config)
        else:
            batches = epoch_batches(rank_rng, _shard_windows(windows, sample_rng, shard), train,
                                    replace(config, batch_size=shard.batch_size(config.batch_size)))
        started = time.perf_counter()
        with tqdm(total=len(batches), desc=f"sasrec/{backend} epoch {epoch + 1}", unit="batch",
                  disable=not show_progress, leave=False) as bar:
            loss = net.train_epoch(batches, config.learning_rate, bar.update)
            if shard is not None:
                loss = shard.all_mean(loss)
        seconds = time.perf_counter() - started
        hr = _validation_hr(net, val)
        # JSON has no NaN: an epoch without validation users records None
        history.append({"epoch": epoch + 1, "loss": loss, "val_hr@10": None if math.isnan(hr) else hr,
                        "seconds": seconds})
        if on_epoch is not None:
            on_epoch(history[-1])
        if show_progress:
            tqdm.write(f"sasrec/{backend} epoch {epoch + 1}: loss {loss:.4f}  val HR@10 {hr:.4f}  {seconds:.1f}s")
        if math.isnan(hr) or hr > best_hr:  # no validation users: every epoch is the newest best
            best_hr, best_epoch, best_weights, stale = hr, epoch + 1, net.weights(), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    metrics = {"val_hr@10": None if math.isnan(best_hr) else best_hr, "best_epoch": best_epoch,
               "epochs_run": len(history), "backend": backend, "windows": len(windows.inputs),
               "history": history}
    return SASRecModel(seqs.items, best_weights, config, metrics)


def sasrec_artifact(model: SASRecModel, events: EventBatch, trained_on: dict[str, Any] | None = None) -> ModelArtifact:
    """The version a retrain writes for a trained SASRec: the item embeddings as the retrieval space
    (a FAISS index over them), the weights as one safetensors file, and each trained user's state
    after their training plays as ``user_factors`` (what the "static" baseline serves)."""
    if not isinstance(model, SASRecModel) or not isinstance(events, EventBatch):
        raise ValueError("sasrec_artifact needs a SASRecModel and an EventBatch")
    encoder = model.encoder()
    item_factors = encoder.item_embeddings
    seqs = build_sequences(events, model.config.repeats, model.item_names)
    has = np.flatnonzero(seqs.lengths > 0)
    states = [encoder.encode(right_aligned([seqs.of(u) for u in has[i:i + _ENCODE_CHUNK]], model.config.max_len))
              for i in range(0, len(has), _ENCODE_CHUNK)]
    user_factors = np.concatenate(states) if states else np.empty((0, model.config.factors), np.float32)
    played = np.searchsorted(model.item_names, events.song_ids[events.kinds == PLAY])
    popularity = np.bincount(played[played < len(model.item_names)], minlength=len(model.item_names))
    index = SongIndex(model.item_names, item_factors)
    metrics = dict(model.metrics)
    params = {"config": asdict(model.config), "backend": metrics.pop("backend", None), "index_kind": index.kind,
              "weights_file": WEIGHTS_FILE, "user_factors": "state after the user's training plays"}
    return ModelArtifact(
        kind="sasrec", song_names=model.item_names, item_factors=item_factors, user_names=seqs.users[has],
        user_factors=user_factors, popularity=popularity.astype(np.float64), params=params,
        trained_on=dict(trained_on or {}, n_users=len(has), n_songs=len(model.item_names),
                        n_plays=int(seqs.lengths.sum())),
        metrics=metrics, files={WEIGHTS_FILE: model.to_bytes()}, index_bytes=index.to_bytes())
