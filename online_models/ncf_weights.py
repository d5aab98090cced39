"""NeuMF's one weight layout (PyTorch ``state_dict`` names and shapes, ``Linear`` weights as (out, in)):
initial weights, validation, and the safetensors file both backends read and write."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np

from online_models.ncf_config import NCFConfig

WEIGHTS_FILE = "ncf.safetensors"
WEIGHTS_FORMAT = "musicrec-neumf-1"


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
