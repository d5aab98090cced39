"""MLX backend of NeuMF (see ``online_models.ncf`` for the model, layout and training rules).

MLX runs on its CPU device on Linux (``mlx[cpu]``) and on Apple silicon's GPU elsewhere; the maths
and the weight layout are the PyTorch backend's, so either can train and the other serve.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from online_models.ncf_config import NCFConfig
from online_models.ncf_weights import check_weights


class _NeuMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, factors: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.gmf_user = nn.Embedding(n_users, factors)
        self.gmf_item = nn.Embedding(n_items, factors)
        self.mlp_user = nn.Embedding(n_users, layers[0] // 2)
        self.mlp_item = nn.Embedding(n_items, layers[0] // 2)
        self.mlp = [nn.Linear(a, b) for a, b in itertools.pairwise(layers)]
        self.out = nn.Linear(factors + layers[-1], 1)
        self.n_factors = factors

    def __call__(self, users: mx.array, items: mx.array) -> mx.array:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        h = mx.concatenate([self.mlp_user(users), self.mlp_item(items)], axis=-1)
        for layer in self.mlp:
            h = nn.relu(layer(h))
        return self.out(mx.concatenate([gmf, h], axis=-1)).squeeze(-1)

    def forward_all(self, users: mx.array) -> mx.array:
        """Logits against every item (same decomposition as the PyTorch backend's ``forward_all``)."""
        w = self.out.weight[0]
        f = self.n_factors
        logits = (self.gmf_user(users) * w[:f]) @ self.gmf_item.weight.T
        mu, mi = self.mlp_user(users), self.mlp_item.weight
        half = mu.shape[1]
        if not self.mlp:
            return logits + (mu @ w[f:f + half])[:, None] + (mi @ w[f + half:])[None, :] + self.out.bias
        first = self.mlp[0]
        h = nn.relu((mu @ first.weight[:, :half].T)[:, None, :]
                    + (mi @ first.weight[:, half:].T + first.bias)[None, :, :])
        for layer in self.mlp[1:]:
            h = nn.relu(layer(h))
        return logits + h @ w[f:] + self.out.bias


def _loss(model: _NeuMF, users: mx.array, items: mx.array, labels: mx.array) -> mx.array:
    return nn.losses.binary_cross_entropy(model(users, items), labels, with_logits=True, reduction="mean")


class MLXNeuMF:
    """NeuMF on MLX, holding weights in the shared layout."""

    def __init__(self, weights: dict[str, np.ndarray], config: NCFConfig | None = None) -> None:
        n_users, n_items, factors, layers = check_weights(weights)
        self.model = _NeuMF(n_users, n_items, factors, layers)
        self.model.update(tree_unflatten([(k, mx.array(np.asarray(v, np.float32))) for k, v in weights.items()]))
        mx.eval(self.model.parameters())
        self.config = config
        self._step: Callable[..., Any] | None = None
        self._opt: optim.AdamW | None = None

    def weights(self) -> dict[str, np.ndarray]:
        flat: list[tuple[str, mx.array]] = tree_flatten(self.model.parameters())  # type: ignore[assignment]
        return {k: np.array(v, dtype=np.float32, copy=True) for k, v in flat}

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = self.model(mx.array(np.asarray(users, np.int64)), mx.array(np.asarray(items, np.int64)))
        return np.array(out, dtype=np.float32)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return np.array(self.model.forward_all(mx.array(np.asarray(users, np.int64))), dtype=np.float32)

    def _make_step(self, cfg: NCFConfig, lr: float) -> Callable[..., Any]:
        # bias_correction=True: MLX defaults to False, PyTorch always corrects; the two must agree
        self._opt = optim.AdamW(learning_rate=lr, betas=[0.9, 0.999], eps=1e-8, weight_decay=cfg.weight_decay,
                                bias_correction=True)
        loss_and_grad = nn.value_and_grad(self.model, _loss)
        state = [self.model.state, self._opt.state]
        opt = self._opt

        # compiled with the model and optimiser state as implicit inputs/outputs: one fused graph per
        # step instead of ~100 small dispatches, which is most of the cost of a small batch on a CPU
        @partial(mx.compile, inputs=state, outputs=state)
        def step(users: mx.array, items: mx.array, labels: mx.array) -> mx.array:
            loss, grads = loss_and_grad(self.model, users, items, labels)
            if cfg.clip_norm > 0:
                grads, _ = optim.clip_grad_norm(grads, cfg.clip_norm)
            opt.update(self.model, grads)
            return loss

        return step

    def train_epoch(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, lr: float,
                    on_batch: Callable[[int], object]) -> float:
        if self.config is None:
            raise ValueError("this backend was loaded for scoring only; pass an NCFConfig to train")
        cfg = self.config
        if self._step is None:
            self._step = self._make_step(cfg, lr)
        assert self._opt is not None
        self._opt.learning_rate = mx.array(lr, dtype=mx.float32)
        u = mx.array(np.asarray(users, np.int64))
        i = mx.array(np.asarray(items, np.int64))
        y = mx.array(np.asarray(labels, np.float32))
        state = [self.model.state, self._opt.state]
        total = mx.array(0.0)
        n = len(users)
        for start in range(0, n, cfg.batch_size):
            stop = min(start + cfg.batch_size, n)
            loss = self._step(u[start:stop], i[start:stop], y[start:stop])
            total = total + loss * (stop - start)
            mx.eval(total, state)
            on_batch(1)
        return float(np.array(total)) / max(1, n)
