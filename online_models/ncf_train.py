"""NeuMF training: epochs of positives and sampled negatives, a cosine learning rate, early stopping
on a validation HR@10, packaged as a ``kind="ncf"`` artifact (see ``online_models.ncf``)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from index_manager.artifacts import ModelArtifact
from index_manager.song_index import SongIndex
from online_models.interactions import Interactions
from online_models.metrics import sampled_hit_ndcg
from online_models.ncf import NeuMFBackend, load_backend
from online_models.ncf_config import BACKENDS, NCFConfig
from online_models.ncf_weights import WEIGHTS_FILE, init_weights, weights_to_bytes
from online_models.ranking import sample_unseen, seen_keys
from online_models.sharding import Shard, owners, pad_to

# early stopping: each validation user keeps >= 3 training positives, and is ranked against this many
_MIN_POSITIVES_FOR_VAL = 4
_VAL_NEGATIVES = 99
_VAL_K = 10


def epoch_samples(rng: np.random.Generator, pos_users: np.ndarray, pos_items: np.ndarray,
                  skip_users: np.ndarray, skip_items: np.ndarray, n_users: int, n_items: int,
                  negatives: int, skip_share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of training pairs (users, items, labels float32), shuffled.

    Every positive appears once. Each user gets ``negatives`` negative slots per positive. Songs the
    user skipped fill the first slots, each skipped song once, up to ``skip_share`` of the slots (a
    random subset when there are more); the remaining slots are uniform over songs the user has no
    positive for. A skip is an explicit "not this", far more informative than a random unplayed song,
    so it is used every epoch instead of with probability ~1/n_items; the cap keeps users with many
    skips seeing random negatives too.
    """
    pos_users = np.asarray(pos_users, dtype=np.int64)
    pos_items = np.asarray(pos_items, dtype=np.int64)
    skip_users = np.asarray(skip_users, dtype=np.int64)
    skip_items = np.asarray(skip_items, dtype=np.int64)
    if pos_users.shape != pos_items.shape or skip_users.shape != skip_items.shape:
        raise ValueError("users and items must be parallel arrays")
    counts = np.bincount(pos_users, minlength=n_users)
    slots = negatives * counts
    cap = np.floor(skip_share * slots + 1e-9).astype(np.int64)
    # a random order within each user's skips: the first `cap` of them are used this epoch
    order = np.lexsort((rng.random(len(skip_users)), skip_users))
    su, si = skip_users[order], skip_items[order]
    first = np.searchsorted(su, su, side="left")
    rank = np.arange(len(su)) - first
    keep = rank < cap[su]
    su, si = su[keep], si[keep]
    n_uniform = slots - np.bincount(su, minlength=n_users)
    seen = seen_keys(pos_users, pos_items, n_items)
    has_room = counts < n_items  # a user with a positive for every song has no negative to draw
    uu = np.repeat(np.arange(n_users), np.where(has_room, n_uniform, 0))
    ui = sample_unseen(rng, uu, 1, n_items, seen, distinct=False)[:, 0]
    users = np.concatenate([pos_users, su, uu])
    items = np.concatenate([pos_items, si, ui])
    labels = np.concatenate([np.ones(len(pos_users), np.float32), np.zeros(len(su) + len(uu), np.float32)])
    perm = rng.permutation(len(users))
    return users[perm], items[perm], labels[perm]


@dataclass
class Split:
    users: np.ndarray
    songs: np.ndarray
    pos_u: np.ndarray
    pos_i: np.ndarray
    skip_u: np.ndarray
    skip_i: np.ndarray
    val_u: np.ndarray
    val_cands: np.ndarray  # (V, 1 + negatives): held-out positive first


def split_pairs(interactions: Interactions, config: NCFConfig, rng: np.random.Generator) -> Split:
    users, u_idx = np.unique(interactions.user_ids, return_inverse=True)
    songs, s_idx = np.unique(interactions.song_ids, return_inverse=True)
    n_items = len(songs)
    is_pos = interactions.pos > interactions.neg
    is_skip = interactions.neg > interactions.pos
    # distinct pairs sorted by (user, song): the split below must not depend on the input's row order
    pos_keys = seen_keys(u_idx[is_pos], s_idx[is_pos], n_items)
    skip_keys = np.setdiff1d(seen_keys(u_idx[is_skip], s_idx[is_skip], n_items), pos_keys)
    pos_u, pos_i = pos_keys // n_items, pos_keys % n_items
    counts = np.bincount(pos_u, minlength=len(users))
    eligible = np.flatnonzero(counts >= _MIN_POSITIVES_FOR_VAL)
    # the validation set needs room for its negatives
    all_seen = seen_keys(u_idx, s_idx, n_items)
    seen_per_user = np.bincount(all_seen // n_items, minlength=len(users))
    eligible = eligible[n_items - seen_per_user[eligible] >= _VAL_NEGATIVES]
    val_u = np.sort(rng.choice(eligible, size=min(config.val_users, len(eligible)), replace=False))
    start = np.searchsorted(pos_u, val_u)
    held = start + (rng.random(len(val_u)) * counts[val_u]).astype(np.int64)
    val_pos = pos_i[held]
    keep = np.ones(len(pos_u), dtype=bool)
    keep[held] = False
    negs = sample_unseen(rng, val_u, _VAL_NEGATIVES, n_items, all_seen)
    return Split(users, songs, pos_u[keep], pos_i[keep], skip_keys // n_items, skip_keys % n_items, val_u,
                  np.concatenate([val_pos[:, None], negs], axis=1))


def shard_pairs(split: Split, rank: int, world: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positive users, items, skip users, items) of process ``rank``: every pair of a user goes to
    the one process that owns the user (:func:`owners`, weighed by positives; ``rng`` must be drawn
    alike in every process)."""
    owner = owners(np.bincount(split.pos_u, minlength=len(split.users)), world, rng)
    mine, mine_skip = owner[split.pos_u] == rank, owner[split.skip_u] == rank
    return split.pos_u[mine], split.pos_i[mine], split.skip_u[mine_skip], split.skip_i[mine_skip]


def validation_hr(net: NeuMFBackend, split: Split) -> float:
    if len(split.val_u) == 0:
        return float("nan")
    users = np.repeat(split.val_u, split.val_cands.shape[1])
    scores = net.score_pairs(users, split.val_cands.ravel()).reshape(split.val_cands.shape)
    hit, _ = sampled_hit_ndcg(scores, _VAL_K)
    return float(hit.mean())


def cosine_lr(config: NCFConfig, epoch: int) -> float:
    # decays to lr/100 rather than 0 so a long run's last epochs still move the weights
    floor = config.learning_rate / 100.0
    return floor + 0.5 * (config.learning_rate - floor) * (1.0 + math.cos(math.pi * epoch / config.epochs))


def train_ncf(interactions: Interactions, config: NCFConfig, backend: str = "torch", show_progress: bool = False,
              trained_on: dict[str, Any] | None = None, shard: Shard | None = None) -> ModelArtifact:
    """Train NeuMF on the engagement rows and package it as a ``kind="ncf"`` artifact.

    Positives are rows with pos > neg; rows with neg > pos (skips outweigh plays) are the preferred
    negatives (see :func:`epoch_samples`). Up to ``config.val_users`` users hold out one random
    positive; after each epoch their HR@10 against 99 unseen songs is measured, and training stops
    after ``config.patience`` epochs without improvement, keeping the best epoch's weights.

    With a ``shard`` this is one process of a data-parallel run: it samples the epochs of its own
    users only (each user's positives and skips stay in one process, so the per-user sampling rules
    hold), steps with ``config.batch_size / world`` rows, and the wrapped model averages the gradients.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown NCF backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not isinstance(interactions, Interactions):
        raise ValueError("interactions must be an Interactions table")
    if not (interactions.pos > interactions.neg).any():
        raise ValueError("cannot train NCF without a single positive (pos > neg) row")
    from tqdm import tqdm

    if shard is not None and backend != "torch":
        raise ValueError("data-parallel NeuMF training needs the torch backend")
    init_seed, split_seed, sample_seed = np.random.SeedSequence(config.seed).spawn(3)
    init_rng, split_rng = np.random.default_rng(init_seed), np.random.default_rng(split_seed)
    split = split_pairs(interactions, config, split_rng)
    n_users, n_items = len(split.users), len(split.songs)
    pos_u, pos_i, skip_u, skip_i = split.pos_u, split.pos_i, split.skip_u, split.skip_i
    step_config = config
    if shard is None:
        sample_rng = np.random.default_rng(sample_seed)
    else:
        owner_seed, rank_seeds = sample_seed.spawn(2)
        pos_u, pos_i, skip_u, skip_i = shard_pairs(split, shard.rank, shard.world, np.random.default_rng(owner_seed))
        sample_rng = np.random.default_rng(rank_seeds.spawn(shard.world)[shard.rank])
        step_config = replace(config, batch_size=shard.batch_size(config.batch_size))
    net = load_backend(backend, init_weights(n_users, n_items, config, init_rng), step_config)
    if shard is not None:
        net.distribute(shard.wrap)  # type: ignore[attr-defined]

    best_hr, best_epoch, best_weights = -1.0, -1, net.weights()
    history: list[dict[str, float]] = []
    stale = 0
    for epoch in range(config.epochs):
        lr = cosine_lr(config, epoch)
        users, items, labels = epoch_samples(sample_rng, pos_u, pos_i, skip_u, skip_i,
                                             n_users, n_items, config.negatives, config.skip_share)
        if shard is not None:
            users, items, labels = pad_to(shard.all_max(len(users)), users, items, labels)
        started = time.perf_counter()
        with tqdm(total=-(-len(users) // step_config.batch_size), desc=f"ncf/{backend} epoch {epoch + 1}",
                  unit="batch", disable=not show_progress, leave=False) as bar:
            loss = net.train_epoch(users, items, labels, lr, bar.update)
            if shard is not None:
                loss = shard.all_mean(loss)
            seconds = time.perf_counter() - started
            hr = validation_hr(net, split)
            bar.set_postfix(loss=f"{loss:.4f}", val_hr=f"{hr:.4f}")
        history.append({"epoch": epoch + 1, "loss": loss, "val_hr@10": hr, "lr": lr, "seconds": seconds})
        if show_progress:
            tqdm.write(f"ncf/{backend} epoch {epoch + 1}: loss {loss:.4f}  val HR@10 {hr:.4f}  {seconds:.1f}s")
        if math.isnan(hr) or hr > best_hr:  # no validation users: every epoch is the newest best
            best_hr, best_epoch, best_weights, stale = hr, epoch + 1, net.weights(), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    return ncf_artifact(split, best_weights, config, backend, interactions, trained_on,
                     metrics={"val_hr@10": None if math.isnan(best_hr) else best_hr, "best_epoch": best_epoch,
                              "epochs_run": len(history), "history": history})


def ncf_artifact(split: Split, weights: dict[str, np.ndarray], config: NCFConfig, backend: str,
              interactions: Interactions, trained_on: dict[str, Any] | None,
              metrics: dict[str, Any]) -> ModelArtifact:
    factors = config.factors
    item_factors = weights["gmf_item.weight"]
    # fold the GMF half of the output layer into the users: user·item is then the GMF logit term
    user_factors = weights["gmf_user.weight"] * weights["out.weight"][0, :factors]
    popularity = np.bincount(split.pos_i, minlength=len(split.songs)).astype(np.float64)
    # the held-out validation positives are still plays: count them in popularity
    popularity += np.bincount(split.val_cands[:, 0], minlength=len(split.songs)) if len(split.val_u) else 0.0
    index = SongIndex(split.songs, item_factors)
    params = {"config": asdict(config), "backend": backend, "index_kind": index.kind, "weights_file": WEIGHTS_FILE,
              "user_factors": "gmf_user.weight * out.weight[0, :factors]"}
    return ModelArtifact(
        kind="ncf", song_names=split.songs, item_factors=item_factors, user_names=split.users,
        user_factors=user_factors, popularity=popularity, params=params,
        trained_on=dict(trained_on or {}, n_interactions=len(interactions), n_users=len(split.users),
                        n_songs=len(split.songs), n_positives=len(split.pos_i) + len(split.val_u),
                        n_skip_negatives=len(split.skip_i)),
        metrics=metrics,
        files={WEIGHTS_FILE: weights_to_bytes(weights, {"backend": backend, "mlp_layers": config.mlp_layers})},
        index_bytes=index.to_bytes(),
    )
