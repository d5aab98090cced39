"""What the SASRec driver (``online_models.sasrec``) and its tensor backends (``sasrec_torch``,
``sasrec_mlx``) share: the hyper-parameters, the one weight layout, a training batch and the backend
protocol. It imports neither side, so the backends never import the driver that loads them.

Layout (PyTorch ``state_dict`` names; ``Linear`` weights are (out, in)); ``d`` = ``factors``::

    item_emb.weight            (n_items + 1, d)   row 0 is padding, never scored
    pos_emb.weight             (max_len, d)       row j = slot j of a right-aligned window
    blocks.{b}.attn_norm.{weight,bias}   (d,)
    blocks.{b}.attn.qkv.{weight,bias}    (3d, d), (3d,)   queries, keys, values stacked
    blocks.{b}.attn.out.{weight,bias}    (d, d), (d,)
    blocks.{b}.ffn_norm.{weight,bias}    (d,)
    blocks.{b}.ffn_in.{weight,bias}      (d, d), (d,)
    blocks.{b}.ffn_out.{weight,bias}     (d, d), (d,)
    final_norm.{weight,bias}             (d,)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from online_models.config import check_ranges, setting

WEIGHTS_FORMAT = "musicrec-sasrec-1"
WEIGHTS_FILE = "sasrec.safetensors"  # a version's file.<name>: weights, config and vocabulary
LOSSES = ("bce", "sampled", "full")
REPEATS = ("keep", "collapse", "first")
LAYER_NORM_EPS = 1e-5
# additive mask value: finite, so a fully masked row cannot make NaN; exp(-1e9) is exactly 0 in float32
MASKED = -1e9


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec hyper-parameters. Architecture and optimiser follow Kang & McAuley 2018 (2 blocks, 1 head,
    Adam betas (0.9, 0.98), batch 128, window 50, dropout 0.5 as for its sparse datasets), with a 64-wide
    embedding because it is the serving index's space. The loss, window length, dropout, learning rate,
    patience and repeat handling were chosen on the early part of both event logs only (fit on the first
    25% of events, prequential replay of the next 25%); figures and what was tried: ``docs/sasrec.md``.
    """

    factors: int = setting(64, "MUSICREC_SASREC_FACTORS",
                           "SASRec embedding width: user states and item embeddings (the retrieval space) live in it.",
                           gt=0)
    max_len: int = setting(50, "MUSICREC_SASREC_MAX_LEN",
                           "Most recent plays a SASRec user state is computed from (and training window length).",
                           gt=0)
    blocks: int = setting(2, "MUSICREC_SASREC_BLOCKS", "SASRec self-attention blocks.", gt=0)
    heads: int = setting(1, "MUSICREC_SASREC_HEADS", "SASRec attention heads (the paper found one enough).", gt=0)
    dropout: float = setting(0.5, "MUSICREC_SASREC_DROPOUT",
                             "SASRec dropout on embeddings, attention weights and block outputs during training.",
                             ge=0, lt=1)
    loss: str = setting("sampled", "MUSICREC_SASREC_LOSS",
                        "SASRec loss: bce (one negative per position, as the paper), sampled (softmax over the "
                        "target and shared uniform negatives) or full (softmax over every item).", choices=LOSSES)
    negatives: int = setting(256, "MUSICREC_SASREC_NEGATIVES",
                             "Shared uniform negatives per batch for SASRec's sampled loss.", gt=0)
    skip_negatives: int = setting(8, "MUSICREC_SASREC_SKIP_NEGATIVES",
                                  "Per sequence, at most this many of the user's skipped songs join SASRec's "
                                  "negatives (sampled loss only: full already scores every song).", ge=0)
    repeats: str = setting("collapse", "MUSICREC_SASREC_REPEATS",
                           "Repeated plays in a SASRec sequence: keep, collapse (drop immediate repeats) or first "
                           "(keep each song's first play only).", choices=REPEATS)
    epochs: int = setting(100, "MUSICREC_SASREC_EPOCHS",
                          "Maximum SASRec training epochs (early stopping usually ends far sooner).", gt=0)
    batch_size: int = setting(128, "MUSICREC_SASREC_BATCH_SIZE", "Sequence windows per SASRec optimiser step.",
                              gt=0)
    learning_rate: float = setting(5e-3, "MUSICREC_SASREC_LEARNING_RATE",
                                   "SASRec Adam(W) learning rate, constant. The paper's 1e-3 needs hundreds of "
                                   "epochs on logs that make only 5-10 batches an epoch.", gt=0)
    weight_decay: float = setting(0.0, "MUSICREC_SASREC_WEIGHT_DECAY", "SASRec decoupled (AdamW) weight decay.",
                                  ge=0)
    clip_norm: float = setting(5.0, "MUSICREC_SASREC_CLIP_NORM",
                               "SASRec global gradient-norm clip per step (0 disables).", ge=0)
    patience: int = setting(10, "MUSICREC_SASREC_PATIENCE",
                            "SASRec epochs without a better validation HR@10 before training stops (HR@10 of a "
                            "few hundred users moves in steps of ~0.3%: a short patience stops on noise).", gt=0)
    val_users: int = setting(1000, "MUSICREC_SASREC_VAL_USERS",
                             "Users whose last play is held out of SASRec training for early stopping "
                             "(0 disables).", ge=0)
    seed: int = setting(0, "MUSICREC_SASREC_SEED",
                        "Seed of SASRec's initial weights, validation split, batch order, negatives and dropout.")

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.factors % self.heads:
            raise ValueError(f"MUSICREC_SASREC_FACTORS ({self.factors}) must be a multiple of "
                             f"MUSICREC_SASREC_HEADS ({self.heads})")


# ---------------------------------------------------------------------------- weights and layout

def weight_shapes(n_items: int, factors: int, max_len: int, blocks: int) -> dict[str, tuple[int, ...]]:
    d = factors
    shapes: dict[str, tuple[int, ...]] = {"item_emb.weight": (n_items + 1, d), "pos_emb.weight": (max_len, d)}
    for b in range(blocks):
        p = f"blocks.{b}."
        shapes.update({
            p + "attn_norm.weight": (d,), p + "attn_norm.bias": (d,),
            p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
            p + "attn.out.weight": (d, d), p + "attn.out.bias": (d,),
            p + "ffn_norm.weight": (d,), p + "ffn_norm.bias": (d,),
            p + "ffn_in.weight": (d, d), p + "ffn_in.bias": (d,),
            p + "ffn_out.weight": (d, d), p + "ffn_out.bias": (d,),
        })
    shapes["final_norm.weight"] = (d,)
    shapes["final_norm.bias"] = (d,)
    return shapes


@dataclass(frozen=True)
class Dims:
    n_items: int
    factors: int
    max_len: int
    blocks: int


def check_weights(weights: dict[str, np.ndarray]) -> Dims:
    """Validate a weight dict against the layout (names, shapes, float32, finite)."""
    try:
        rows, d = weights["item_emb.weight"].shape
        max_len = weights["pos_emb.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a SASRec weight set: {exc}") from exc
    blocks = 0
    while f"blocks.{blocks}.attn.qkv.weight" in weights:
        blocks += 1
    if rows < 2 or blocks == 0:
        raise ValueError(f"a SASRec weight set needs >= 1 item and >= 1 block, got {rows - 1} and {blocks}")
    expected = weight_shapes(int(rows) - 1, int(d), int(max_len), blocks)
    if set(weights) != set(expected):
        raise ValueError(f"SASRec weights differ from the layout: missing {sorted(set(expected) - set(weights))}, "
                         f"unexpected {sorted(set(weights) - set(expected))}")
    for name, shape in expected.items():
        arr = weights[name]
        if arr.shape != shape or arr.dtype != np.float32:
            raise ValueError(f"weight {name} is {arr.dtype}{arr.shape}, expected float32{shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"weight {name} contains NaN or inf")
    return Dims(int(rows) - 1, int(d), int(max_len), blocks)


def init_weights(n_items: int, config: SASRecConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Initial weights from ``rng`` alone, so both backends start from the same point: Xavier-uniform
    matrices (as the reference implementations), N(0, 1/d) embeddings so that sqrt(d)-scaled inputs have
    unit variance, zero biases, unit layer-norm gains, a zero padding row."""
    out: dict[str, np.ndarray] = {}
    d = config.factors
    for name, shape in weight_shapes(n_items, d, config.max_len, config.blocks).items():
        if name.endswith("norm.weight"):
            arr = np.ones(shape)
        elif name.endswith("bias"):
            arr = np.zeros(shape)
        elif name.endswith("_emb.weight"):
            arr = rng.normal(0.0, 1.0 / math.sqrt(d), size=shape)
        else:
            # qkv is three (d, d) maps stacked: each gets its own Xavier bound
            bound = math.sqrt(6.0 / (shape[1] + shape[1]))
            arr = rng.uniform(-bound, bound, size=shape)
        out[name] = arr.astype(np.float32)
    out["item_emb.weight"][0] = 0.0
    return out


def weights_to_bytes(weights: dict[str, np.ndarray], metadata: dict[str, object]) -> bytes:
    """safetensors bytes; ``metadata`` goes in as one sorted JSON string so identical models give
    identical bytes (safetensors writes several metadata keys in hash-map order)."""
    from safetensors.numpy import save

    check_weights(weights)
    meta = json.dumps({"format": WEIGHTS_FORMAT, **metadata}, sort_keys=True)
    return bytes(save({k: np.ascontiguousarray(v) for k, v in weights.items()}, metadata={"musicrec": meta}))


def weights_from_bytes(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(weights, metadata) of :func:`weights_to_bytes` output; ValueError on anything else."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not isinstance(data, bytes | bytearray):
        raise ValueError("SASRec weights must be bytes")
    try:
        weights = load(bytes(data))
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8:8 + header_len]))
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a safetensors file: {exc}") from exc
    meta = json.loads(header.get("__metadata__", {}).get("musicrec", "{}"))
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"not a {WEIGHTS_FORMAT} file (format {meta.get('format')!r})")
    check_weights(weights)
    return weights, meta


# ---------------------------------------------------------------------------------- training batch

@dataclass(frozen=True)
class Batch:
    """One optimiser step, built in numpy by the driver so both backends see identical inputs.

    ``inputs`` (B, L) item rows, right-aligned, 0 = padding. The loss is taken at the ``P`` flattened
    positions ``flat_pos`` (into B*L) whose next item is ``targets``; ``weights`` is 1 for real positions
    and 0 for the padding that rounds P up to a few fixed sizes (so MLX compiles few graphs).
    ``negatives``: (N,) rows shared by the batch (sampled loss), (P, 1) per position (bce) or (0,)
    (full). ``extra_negatives`` (P, S): per-position hard negatives (the user's skips), 0 = none.
    """

    inputs: np.ndarray
    flat_pos: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    negatives: np.ndarray
    extra_negatives: np.ndarray


# ---------------------------------------------------------------------------------- backends

class SASRecBackend(Protocol):
    """What ``sasrec_torch`` and ``sasrec_mlx`` provide: the tensor maths, nothing else."""

    def weights(self) -> dict[str, np.ndarray]:
        """Current weights as float32 numpy arrays in the shared layout."""

    def hidden(self, sequences: np.ndarray) -> np.ndarray:
        """Final-layer states at every position, float32 (U, L, d), eval mode (no dropout)."""

    def train_epoch(self, batches: Sequence[Batch], lr: float, on_batch: Callable[[int], object]) -> float:
        """One optimiser step per batch, in order; returns the mean loss over real positions."""
