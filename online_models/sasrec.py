"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"): a causal transformer over
a user's recent plays whose last state is a query vector; score(item) = state · item embedding, the
item embedding being shared between input and output.

As with NeuMF, two interchangeable backends (``sasrec_torch``, ``sasrec_mlx``) do the tensor maths
only; everything they consume is computed in numpy from the seed (``sasrec_train``). Weights are one
safetensors layout (``sasrec_spec``); a model trained by either backend loads in the other, and in
the numpy encoder (:class:`SASRecEncoder`) that serves without either. This module is the model side:
sequences, the encoder and the saved model; it imports neither torch nor MLX.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from online_models.batch import PLAY, SKIP, EventBatch
from online_models.sasrec_spec import (
    LAYER_NORM_EPS,
    MASKED,
    SASRecBackend,
    SASRecConfig,
    check_weights,
    weights_from_bytes,
    weights_to_bytes,
)

__all__ = ["BACKENDS", "SASRecConfig", "SASRecEncoder", "SASRecModel", "Sequences", "build_sequences",
           "load_backend", "right_aligned"]

BACKENDS = ("torch", "mlx")


def load_backend(backend: str, weights: dict[str, np.ndarray], heads: int,
                 config: SASRecConfig | None = None) -> SASRecBackend:
    """A backend holding ``weights``; ``config`` (dropout, optimiser, loss) is needed only to train."""
    check_weights(weights)
    if backend == "torch":
        from online_models.sasrec_torch import TorchSASRec

        return TorchSASRec(weights, heads, config)
    if backend == "mlx":
        from online_models.sasrec_mlx import MLXSASRec

        return MLXSASRec(weights, heads, config)
    raise ValueError(f"unknown SASRec backend {backend!r}; choose from {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------- sequences

@dataclass(frozen=True)
class Sequences:
    """Per-user play sequences as item rows (1-based; 0 is padding), oldest first.

    User ``users[u]`` played ``flat[offsets[u]:offsets[u + 1]]`` and skipped the distinct items
    ``skip_flat[skip_offsets[u]:skip_offsets[u + 1]]`` (skips never enter a sequence)."""

    users: np.ndarray
    items: np.ndarray
    offsets: np.ndarray
    flat: np.ndarray
    skip_offsets: np.ndarray
    skip_flat: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, u: int) -> np.ndarray:
        return self.flat[self.offsets[u]:self.offsets[u + 1]]


def _drop_repeats(user: np.ndarray, item: np.ndarray, repeats: str) -> np.ndarray:
    """Keep-mask over (user, item) rows grouped by user in time order."""
    if repeats == "keep" or len(user) == 0:
        return np.ones(len(user), bool)
    if repeats == "collapse":
        return np.r_[True, (user[1:] != user[:-1]) | (item[1:] != item[:-1])]
    _, first = np.unique(user.astype(np.int64) * (int(item.max()) + 1) + item, return_index=True)
    keep = np.zeros(len(user), bool)
    keep[first] = True
    return keep


def build_sequences(events: EventBatch, repeats: str = "collapse", items: np.ndarray | None = None) -> Sequences:
    """Sequences of ``events`` in time order (file order breaks ties). ``items`` is the vocabulary
    (sorted song names); by default the songs played at least once in ``events``. Plays of songs
    outside it are dropped; users without a remaining play still appear, with empty sequences."""
    if not isinstance(events, EventBatch):
        raise ValueError("events must be an EventBatch")
    ordered = events.sorted_by_time()
    plays = ordered.kinds == PLAY
    vocab = np.unique(ordered.song_ids[plays]) if items is None else np.asarray(items, dtype=object)
    users, ucode = np.unique(ordered.user_ids, return_inverse=True)
    row = np.searchsorted(vocab, ordered.song_ids) if len(vocab) else np.zeros(len(ordered), np.int64)
    known = row < len(vocab)
    known[known] = vocab[row[known]] == ordered.song_ids[known]
    item = row.astype(np.int64) + 1

    def grouped(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(ucode[idx], kind="stable")]  # by user, time order within
        return ucode[idx], item[idx]

    pu, pi = grouped(plays & known)
    keep = _drop_repeats(pu, pi, repeats)
    pu, pi = pu[keep], pi[keep]
    su, si = grouped((ordered.kinds == SKIP) & known)
    if len(su):
        distinct = np.unique(su.astype(np.int64) * (len(vocab) + 1) + si)
        su, si = distinct // (len(vocab) + 1), distinct % (len(vocab) + 1)
    bounds = np.arange(len(users) + 1)
    return Sequences(users, vocab, np.searchsorted(pu, bounds), pi, np.searchsorted(su, bounds), si)


def right_aligned(rows: list[np.ndarray], width: int) -> np.ndarray:
    """(len(rows), width) int64 matrix of each row's last ``width`` items, padded with 0 on the left."""
    out = np.zeros((len(rows), width), np.int64)
    lengths = np.array([min(len(r), width) for r in rows], np.int64)
    if lengths.sum():
        cols = np.concatenate([np.arange(width - n, width) for n in lengths])
        out[np.repeat(np.arange(len(rows)), lengths), cols] = np.concatenate(
            [r[len(r) - n:] for r, n in zip(rows, lengths, strict=True)])
    return out


# ---------------------------------------------------------------------------------- inference

def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LAYER_NORM_EPS) * gain + bias


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    # one 2-d GEMM: numpy runs (U, L, d) @ (d, out) as U small products, ~7x slower
    return (x.reshape(-1, x.shape[-1]) @ weight.T + bias).reshape(*x.shape[:-1], weight.shape[0])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def check_sequences(sequences: object, n_items: int, max_len: int) -> np.ndarray:
    """Validate (U, L) right-aligned item rows at a public entry point; returns them as int64."""
    seqs = np.asarray(sequences)
    if seqs.ndim != 2 or seqs.shape[1] == 0:
        raise ValueError(f"sequences must be a 2-d (users, length) array, got shape {seqs.shape}")
    if seqs.size and seqs.dtype.kind not in "iu":
        raise ValueError(f"sequences must hold integer item rows, got dtype {seqs.dtype}")
    if seqs.shape[1] > max_len:
        raise ValueError(f"sequences are {seqs.shape[1]} long; this model reads at most {max_len} plays")
    seqs = seqs.astype(np.int64)
    if seqs.size and (seqs.min() < 0 or seqs.max() > n_items):
        raise ValueError(f"item rows must be in 0..{n_items} (0 = padding)")
    if ((seqs[:, 1:] == 0) & (seqs[:, :-1] != 0)).any():
        raise ValueError("sequences must be right-aligned: padding (0) only before a row's first play")
    return seqs


class SASRecEncoder:
    """Eval-mode forward pass in numpy: user states for a micro-batch without torch or MLX.

    ``encode`` returns the final state at each row's newest position; the last block computes
    attention and FFN for that position only, which is all serving needs."""

    def __init__(self, weights: dict[str, np.ndarray], heads: int) -> None:
        self.dims = check_weights(weights)
        if heads <= 0 or self.dims.factors % heads:
            raise ValueError(f"heads must divide factors ({self.dims.factors}), got {heads}")
        self.w = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        self.heads = heads

    @property
    def item_embeddings(self) -> np.ndarray:
        """(n_items, d) output embeddings, row i = item row i + 1: scores are ``states @ item_embeddings.T``."""
        return self.w["item_emb.weight"][1:]

    def encode(self, sequences: np.ndarray) -> np.ndarray:
        """User states float32 (U, d) of right-aligned item rows (U, L), L <= max_len."""
        seqs = check_sequences(sequences, self.dims.n_items, self.dims.max_len)
        d, h = self.dims.factors, self.heads
        if len(seqs) == 0:
            return np.empty((0, d), np.float32)
        # columns that are padding in every row change nothing (their keys are masked): drop them
        used = np.flatnonzero((seqs != 0).any(axis=0))
        seqs = seqs[:, used[0] if len(used) else seqs.shape[1] - 1:]
        u, length = seqs.shape
        w = self.w
        x = w["item_emb.weight"][seqs] * np.float32(math.sqrt(d)) + w["pos_emb.weight"][self.dims.max_len - length:]
        allowed = (np.tril(np.ones((length, length), bool)) & (seqs != 0)[:, None, :]) | np.eye(length, dtype=bool)
        mask = np.where(allowed, np.float32(0.0), np.float32(MASKED))[:, None]  # (U, 1, L, L)
        scale = np.float32(1.0 / math.sqrt(d // h))
        for b in range(self.dims.blocks):
            p = f"blocks.{b}."
            last = b == self.dims.blocks - 1
            qkv = _linear(_layer_norm(x, w[p + "attn_norm.weight"], w[p + "attn_norm.bias"]),
                          w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
            qkv = qkv.reshape(u, length, 3, h, d // h).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            m = mask
            if last:
                q, m, x = q[:, :, -1:], mask[:, :, -1:], x[:, -1:]
            att = _softmax(q @ k.transpose(0, 1, 3, 2) * scale + m)
            o = (att @ v).transpose(0, 2, 1, 3).reshape(u, -1, d)
            x = x + _linear(o, w[p + "attn.out.weight"], w[p + "attn.out.bias"])
            f = _linear(_layer_norm(x, w[p + "ffn_norm.weight"], w[p + "ffn_norm.bias"]),
                        w[p + "ffn_in.weight"], w[p + "ffn_in.bias"])
            x = x + _linear(np.maximum(f, 0.0), w[p + "ffn_out.weight"], w[p + "ffn_out.bias"])
        out = _layer_norm(x[:, -1], w["final_norm.weight"], w["final_norm.bias"])
        return np.ascontiguousarray(out, dtype=np.float32)


@dataclass
class SASRecModel:
    """A trained model: vocabulary (``item_names[i]`` is item row i + 1), weights and their config."""

    item_names: np.ndarray
    weights: dict[str, np.ndarray]
    config: SASRecConfig
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dims = check_weights(self.weights)
        self.item_names = np.asarray(self.item_names, dtype=object)
        if self.item_names.shape != (dims.n_items,):
            raise ValueError(f"weights are for {dims.n_items} items, got {self.item_names.shape} names")
        if (dims.factors, dims.max_len, dims.blocks) != (self.config.factors, self.config.max_len, self.config.blocks):
            raise ValueError("weights do not match the config's factors / max_len / blocks")

    def encoder(self) -> SASRecEncoder:
        return SASRecEncoder(self.weights, self.config.heads)

    def to_bytes(self) -> bytes:
        """One safetensors file: weights, config and vocabulary (metadata); never pickle."""
        return weights_to_bytes(self.weights, {"config": asdict(self.config), "items": self.item_names.tolist(),
                                               "metrics": {k: v for k, v in self.metrics.items() if k != "history"}})

    @classmethod
    def from_bytes(cls, data: bytes) -> SASRecModel:
        weights, meta = weights_from_bytes(data)
        try:
            config = SASRecConfig(**meta["config"])  # type: ignore[arg-type]
            items = np.asarray(meta["items"], dtype=object)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"SASRec file without a valid config and vocabulary: {exc}") from exc
        return cls(items, weights, config, dict(meta.get("metrics", {})))  # type: ignore[call-overload]
