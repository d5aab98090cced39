"""NeuMF (He et al. 2017, "Neural Collaborative Filtering"): a GMF and an MLP tower fused by one
output layer, trained with binary cross-entropy on positives and sampled negatives.

Two interchangeable backends, PyTorch (``ncf_torch``) and MLX (``ncf_mlx``), share everything except
the tensor maths: the initial weights, the training samples, the LR schedule and early stopping are
computed here in numpy from the seed, so both see identical inputs. Weights are exchanged as one
safetensors file with one layout (PyTorch ``state_dict`` names and shapes, ``Linear`` weights as
(out, in)); a model trained by either backend loads in the other.

The artifact's retrieval space is the GMF branch: ``item_factors`` are the GMF item embeddings and
``user_factors`` the GMF user embeddings scaled by the GMF half of the output weights, so a FAISS
inner product is exactly the GMF branch's contribution to the NeuMF logit. Full NeuMF scores come
from :class:`NCFScorer`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from index_manager.artifacts import ModelArtifact
from index_manager.song_index import SongIndex
from online_models.config import setting
from online_models.interactions import Interactions
from online_models.metrics import sampled_hit_ndcg
from online_models.sampling import sample_unseen, seen_keys

BACKENDS = ("torch", "mlx")
WEIGHTS_FILE = "ncf.safetensors"
WEIGHTS_FORMAT = "musicrec-neumf-1"
# early stopping: each validation user keeps >= 3 training positives, and is ranked against this many
_MIN_POSITIVES_FOR_VAL = 4
_VAL_NEGATIVES = 99
_VAL_K = 10
# (users x songs) pairs per scoring chunk: bounds the MLP's hidden activations to ~64 MB
CHUNK_PAIRS = 1 << 19


@dataclass(frozen=True)
class NCFConfig:
    """NeuMF hyper-parameters. Defaults follow the NCF paper and its reference code (Adam, lr 1e-3,
    4 negatives per positive, a 3-layer halving tower, N(0, 0.01) embeddings), with a 64-wide GMF
    branch because it is the serving index's space. The one departure, batch 512 instead of 256 (both
    in the paper's grid), was chosen on leave-last-out over the Last.fm events before their median
    timestamp only: equal HR@10 within noise (0.528 vs 0.515, 879 users), about half the training time.
    """

    factors: int = setting(64, "MUSICREC_NCF_FACTORS",  # type: ignore[assignment]
                           "GMF embedding width: the retrieval space the song index searches.")
    mlp_layers: str = setting("64,32,16", "MUSICREC_NCF_MLP_LAYERS",  # type: ignore[assignment]
                              "MLP tower widths; the first is the concatenated user+item embedding.")
    epochs: int = setting(20, "MUSICREC_NCF_EPOCHS",  # type: ignore[assignment]
                          "Maximum training epochs (early stopping usually ends sooner).")
    batch_size: int = setting(512, "MUSICREC_NCF_BATCH_SIZE",  # type: ignore[assignment]
                              "Training pairs (positives and negatives) per optimiser step.")
    learning_rate: float = setting(1e-3, "MUSICREC_NCF_LEARNING_RATE",  # type: ignore[assignment]
                                   "Adam(W) learning rate at epoch 0, cosine-decayed over `epochs`.")
    negatives: int = setting(4, "MUSICREC_NCF_NEGATIVES",  # type: ignore[assignment]
                             "Sampled negatives per positive and epoch.")
    skip_share: float = setting(0.5, "MUSICREC_NCF_SKIP_SHARE",  # type: ignore[assignment]
                                "At most this share of a user's negatives per epoch are songs they skipped.")
    weight_decay: float = setting(0.0, "MUSICREC_NCF_WEIGHT_DECAY",  # type: ignore[assignment]
                                  "Decoupled (AdamW) weight decay; 0 as in the NCF paper.")
    patience: int = setting(3, "MUSICREC_NCF_PATIENCE",  # type: ignore[assignment]
                            "Epochs without a better validation HR@10 before training stops.")
    clip_norm: float = setting(5.0, "MUSICREC_NCF_CLIP_NORM",  # type: ignore[assignment]
                               "Global gradient-norm clip per step (0 disables).")
    val_users: int = setting(1000, "MUSICREC_NCF_VAL_USERS",  # type: ignore[assignment]
                             "Users holding out one positive for early stopping (0 disables it).")
    seed: int = setting(0, "MUSICREC_NCF_SEED",  # type: ignore[assignment]
                        "Seed of the initial weights, validation split and negative sampling.")

    def __post_init__(self) -> None:
        layers = self.layers  # raises ValueError on a malformed string
        if layers[0] % 2:
            raise ValueError(f"the first MLP width ({layers[0]}) must be even: it is two equal embeddings")
        if min(self.factors, self.epochs, self.batch_size, self.negatives, self.patience) <= 0:
            raise ValueError("factors, epochs, batch_size, negatives and patience must be positive")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.clip_norm < 0 or self.val_users < 0:
            raise ValueError("learning_rate must be > 0; weight_decay, clip_norm and val_users >= 0")
        if not 0.0 <= self.skip_share <= 1.0:
            raise ValueError(f"skip_share must be in [0, 1], got {self.skip_share}")

    @property
    def layers(self) -> tuple[int, ...]:
        try:
            widths = tuple(int(w) for w in str(self.mlp_layers).split(","))
        except ValueError:
            raise ValueError(f"mlp_layers must be comma-separated integers, got {self.mlp_layers!r}") from None
        if not widths or min(widths) <= 0:
            raise ValueError(f"mlp_layers must be positive integers, got {self.mlp_layers!r}")
        return widths


# ---------------------------------------------------------------------------- weights and layout

def weight_shapes(n_users: int, n_items: int, factors: int, layers: tuple[int, ...]
                  ) -> dict[str, tuple[int, ...]]:
    """The one weight layout both backends use (PyTorch ``state_dict`` names)."""
    half = layers[0] // 2
    shapes: dict[str, tuple[int, ...]] = {
        "gmf_user.weight": (n_users, factors), "gmf_item.weight": (n_items, factors),
        "mlp_user.weight": (n_users, half), "mlp_item.weight": (n_items, half),
    }
    for j, (fan_in, fan_out) in enumerate(itertools.pairwise(layers)):
        shapes[f"mlp.{j}.weight"] = (fan_out, fan_in)
        shapes[f"mlp.{j}.bias"] = (fan_out,)
    shapes["out.weight"] = (1, factors + layers[-1])
    shapes["out.bias"] = (1,)
    return shapes


def init_weights(n_users: int, n_items: int, config: NCFConfig, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """Initial weights from ``rng`` alone, so every backend starts from the same point: embeddings
    N(0, 0.01) as in the paper, hidden layers Xavier-uniform, the output layer uniform(±sqrt(3/fan_in))
    (LeCun scale: its input is not followed by a ReLU), biases zero."""
    out: dict[str, np.ndarray] = {}
    for name, shape in weight_shapes(n_users, n_items, config.factors, config.layers).items():
        if name.endswith("bias"):
            arr = np.zeros(shape)
        elif name.startswith(("gmf_", "mlp_")):
            arr = rng.normal(0.0, 0.01, size=shape)
        elif name.startswith("mlp."):
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            arr = rng.uniform(-bound, bound, size=shape)
        else:
            bound = math.sqrt(3.0 / shape[1])
            arr = rng.uniform(-bound, bound, size=shape)
        out[name] = arr.astype(np.float32)
    return out


def check_weights(weights: dict[str, np.ndarray]) -> tuple[int, int, int, tuple[int, ...]]:
    """Validate a weight dict against the layout; returns (n_users, n_items, factors, layers)."""
    try:
        n_users, factors = weights["gmf_user.weight"].shape
        n_items = weights["gmf_item.weight"].shape[0]
        half = weights["mlp_user.weight"].shape[1]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a NeuMF weight set: {exc}") from exc
    layers = [2 * half]
    while f"mlp.{len(layers) - 1}.weight" in weights:
        layers.append(int(weights[f"mlp.{len(layers) - 1}.weight"].shape[0]))
    expected = weight_shapes(n_users, n_items, factors, tuple(layers))
    if set(weights) != set(expected):
        raise ValueError(f"NeuMF weights differ from the layout: missing {sorted(set(expected) - set(weights))}, "
                         f"unexpected {sorted(set(weights) - set(expected))}")
    for name, shape in expected.items():
        arr = weights[name]
        if arr.shape != shape or arr.dtype != np.float32:
            raise ValueError(f"weight {name} is {arr.dtype}{arr.shape}, expected float32{shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"weight {name} contains NaN or inf")
    return int(n_users), int(n_items), int(factors), tuple(layers)


def weights_to_bytes(weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of the weights; ``metadata`` goes in as one sorted JSON string, because
    safetensors writes several metadata keys in hash-map order and the bytes (and the artifact's
    checksum) would then differ between two identical models."""
    import json

    from safetensors.numpy import save

    check_weights(weights)
    meta = json.dumps({"format": WEIGHTS_FORMAT, **(metadata or {})}, sort_keys=True)
    return bytes(save({k: np.ascontiguousarray(v) for k, v in weights.items()}, metadata={"musicrec": meta}))


def weights_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        weights = load(data)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"not a safetensors file: {exc}") from exc
    check_weights(weights)
    return weights


# ---------------------------------------------------------------------------------- backends

class NeuMFBackend(Protocol):
    """What ``ncf_torch`` and ``ncf_mlx`` provide: the tensor maths, nothing else."""

    def weights(self) -> dict[str, np.ndarray]:
        """Current weights as float32 numpy arrays in the shared layout."""

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Logits of parallel (user row, item row) arrays, float32 (n,)."""

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """Logits of the given user rows against every item, float32 (len(users), n_items)."""

    def train_epoch(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, lr: float,
                    on_batch: Callable[[int], object]) -> float:
        """One pass over the samples in order, ``batch_size`` per step; returns the mean loss."""


def load_backend(backend: str, weights: dict[str, np.ndarray], config: NCFConfig | None = None) -> NeuMFBackend:
    """A backend holding ``weights``; ``config`` (optimiser settings) is needed only to train."""
    check_weights(weights)
    if backend == "torch":
        from online_models.ncf_torch import TorchNeuMF

        return TorchNeuMF(weights, config)
    if backend == "mlx":
        from online_models.ncf_mlx import MLXNeuMF

        return MLXNeuMF(weights, config)
    raise ValueError(f"unknown NCF backend {backend!r}; choose from {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------- sampling

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
class _Split:
    users: np.ndarray
    songs: np.ndarray
    pos_u: np.ndarray
    pos_i: np.ndarray
    skip_u: np.ndarray
    skip_i: np.ndarray
    val_u: np.ndarray
    val_cands: np.ndarray  # (V, 1 + negatives): held-out positive first


def _split(interactions: Interactions, config: NCFConfig, rng: np.random.Generator) -> _Split:
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
    return _Split(users, songs, pos_u[keep], pos_i[keep], skip_keys // n_items, skip_keys % n_items, val_u,
                  np.concatenate([val_pos[:, None], negs], axis=1))


def _validation_hr(net: NeuMFBackend, split: _Split) -> float:
    if len(split.val_u) == 0:
        return float("nan")
    users = np.repeat(split.val_u, split.val_cands.shape[1])
    scores = net.score_pairs(users, split.val_cands.ravel()).reshape(split.val_cands.shape)
    hit, _ = sampled_hit_ndcg(scores, _VAL_K)
    return float(hit.mean())


def _cosine_lr(config: NCFConfig, epoch: int) -> float:
    # decays to lr/100 rather than 0 so a long run's last epochs still move the weights
    floor = config.learning_rate / 100.0
    return floor + 0.5 * (config.learning_rate - floor) * (1.0 + math.cos(math.pi * epoch / config.epochs))


# ---------------------------------------------------------------------------------- training

def train_ncf(interactions: Interactions, config: NCFConfig, backend: str = "torch", show_progress: bool = False,
              trained_on: dict[str, Any] | None = None) -> ModelArtifact:
    """Train NeuMF on the engagement rows and package it as a ``kind="ncf"`` artifact.

    Positives are rows with pos > neg; rows with neg > pos (skips outweigh plays) are the preferred
    negatives (see :func:`epoch_samples`). Up to ``config.val_users`` users hold out one random
    positive; after each epoch their HR@10 against 99 unseen songs is measured, and training stops
    after ``config.patience`` epochs without improvement, keeping the best epoch's weights.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown NCF backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not isinstance(interactions, Interactions):
        raise ValueError("interactions must be an Interactions table")
    if not (interactions.pos > interactions.neg).any():
        raise ValueError("cannot train NCF without a single positive (pos > neg) row")
    from tqdm import tqdm

    init_rng, split_rng, sample_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3))
    split = _split(interactions, config, split_rng)
    n_users, n_items = len(split.users), len(split.songs)
    net = load_backend(backend, init_weights(n_users, n_items, config, init_rng), config)

    best_hr, best_epoch, best_weights = -1.0, -1, net.weights()
    history: list[dict[str, float]] = []
    stale = 0
    for epoch in range(config.epochs):
        lr = _cosine_lr(config, epoch)
        users, items, labels = epoch_samples(sample_rng, split.pos_u, split.pos_i, split.skip_u, split.skip_i,
                                             n_users, n_items, config.negatives, config.skip_share)
        started = time.perf_counter()
        with tqdm(total=-(-len(users) // config.batch_size), desc=f"ncf/{backend} epoch {epoch + 1}",
                  unit="batch", disable=not show_progress, leave=False) as bar:
            loss = net.train_epoch(users, items, labels, lr, bar.update)
            seconds = time.perf_counter() - started
            hr = _validation_hr(net, split)
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
    return _artifact(split, best_weights, config, backend, interactions, trained_on,
                     metrics={"val_hr@10": None if math.isnan(best_hr) else best_hr, "best_epoch": best_epoch,
                              "epochs_run": len(history), "history": history})


def _artifact(split: _Split, weights: dict[str, np.ndarray], config: NCFConfig, backend: str,
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


# ---------------------------------------------------------------------------------- scoring

def _check_rows(rows: object, n: int, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be a {ndim}-d integer array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{what} out of range 0..{n - 1}")
    return arr


class NCFScorer:
    """Full NeuMF scores (logits) for a trained model, on either backend, batched.

    ``score`` takes user rows (U,) and candidate song rows (U, C); ``score_all`` scores every song.
    Rows come from :meth:`user_rows` / :meth:`song_rows` (-1 marks an unknown name, which the
    scoring methods refuse: what an unknown user or song should get is the caller's policy).
    """

    def __init__(self, user_names: np.ndarray, song_names: np.ndarray, weights: dict[str, np.ndarray],
                 backend: str = "torch") -> None:
        n_users, n_items, _, _ = check_weights(weights)
        self.user_names = np.asarray(user_names, dtype=object)
        self.song_names = np.asarray(song_names, dtype=object)
        if self.user_names.shape != (n_users,) or self.song_names.shape != (n_items,):
            raise ValueError(f"weights are for {n_users} users x {n_items} songs, got "
                             f"{self.user_names.shape} user and {self.song_names.shape} song names")
        self.backend = backend
        self._net = load_backend(backend, weights)
        self._user_row = {u: i for i, u in enumerate(self.user_names.tolist())}
        self._song_row = {s: i for i, s in enumerate(self.song_names.tolist())}

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact, backend: str = "torch") -> NCFScorer:
        if artifact.kind != "ncf" or WEIGHTS_FILE not in artifact.files:
            raise ValueError(f"not an NCF artifact (kind {artifact.kind!r}, files {sorted(artifact.files)})")
        return cls(artifact.user_names, artifact.song_names, weights_from_bytes(artifact.files[WEIGHTS_FILE]),
                   backend)

    def weights(self) -> dict[str, np.ndarray]:
        return self._net.weights()

    def user_rows(self, names: object) -> np.ndarray:
        arr = np.asarray(names, dtype=object)
        get = self._user_row.get
        return np.fromiter((get(u, -1) for u in arr.ravel()), np.int64, arr.size).reshape(arr.shape)

    def song_rows(self, names: object) -> np.ndarray:
        arr = np.asarray(names, dtype=object)
        get = self._song_row.get
        return np.fromiter((get(s, -1) for s in arr.ravel()), np.int64, arr.size).reshape(arr.shape)

    def score(self, user_rows: np.ndarray, song_rows: np.ndarray) -> np.ndarray:
        """NeuMF logits, float32 (U, C), for user rows (U,) and their candidate song rows (U, C)."""
        users = _check_rows(user_rows, len(self.user_names), 1, "user_rows")
        songs = _check_rows(song_rows, len(self.song_names), 2, "song_rows")
        if songs.shape[0] != len(users):
            raise ValueError(f"song_rows has {songs.shape[0]} rows for {len(users)} users")
        flat_u = np.repeat(users, songs.shape[1])
        flat_s = songs.ravel()
        out = np.empty(len(flat_u), dtype=np.float32)
        for start in range(0, len(flat_u), CHUNK_PAIRS):
            sl = slice(start, start + CHUNK_PAIRS)
            out[sl] = self._net.score_pairs(flat_u[sl], flat_s[sl])
        return out.reshape(songs.shape)

    def score_all(self, user_rows: np.ndarray) -> np.ndarray:
        """NeuMF logits of every song, float32 (U, n_songs)."""
        users = _check_rows(user_rows, len(self.user_names), 1, "user_rows")
        out = np.empty((len(users), len(self.song_names)), dtype=np.float32)
        step = max(1, CHUNK_PAIRS // max(1, len(self.song_names)))
        for start in range(0, len(users), step):
            out[start:start + step] = self._net.score_all(users[start:start + step])
        return out
