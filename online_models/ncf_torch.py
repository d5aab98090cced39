"""PyTorch backend of NeuMF (see ``online_models.ncf`` for the model, layout and training rules)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from online_models.ncf_config import NCFConfig
from online_models.ncf_weights import check_weights


class _NeuMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, factors: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.gmf_user = nn.Embedding(n_users, factors)
        self.gmf_item = nn.Embedding(n_items, factors)
        self.mlp_user = nn.Embedding(n_users, layers[0] // 2)
        self.mlp_item = nn.Embedding(n_items, layers[0] // 2)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(layers))
        self.out = nn.Linear(factors + layers[-1], 1)
        self.factors = factors

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        h = torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=-1)
        for layer in self.mlp:
            h = F.relu(layer(h))
        return self.out(torch.cat([gmf, h], dim=-1)).squeeze(-1)

    def forward_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits against every item without materialising (users x items) embedding pairs: the GMF
        term is one matmul and the first MLP layer splits into a user part plus an item part."""
        w = self.out.weight[0]
        f = self.factors
        logits = (self.gmf_user(users) * w[:f]) @ self.gmf_item.weight.T
        mu, mi = self.mlp_user(users), self.mlp_item.weight
        half = mu.shape[1]
        if len(self.mlp) == 0:
            return logits + (mu @ w[f:f + half])[:, None] + (mi @ w[f + half:])[None, :] + self.out.bias
        first: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        h = F.relu((mu @ first.weight[:, :half].T)[:, None, :]
                   + (mi @ first.weight[:, half:].T + first.bias)[None, :, :])
        for layer in list(self.mlp)[1:]:
            h = F.relu(layer(h))
        return logits + h @ w[f:] + self.out.bias


class TorchNeuMF:
    """NeuMF on PyTorch (CPU), holding weights in the shared layout."""

    def __init__(self, weights: dict[str, np.ndarray], config: NCFConfig | None = None) -> None:
        n_users, n_items, factors, layers = check_weights(weights)
        self.model = _NeuMF(n_users, n_items, factors, layers)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
        self.config = config
        self._opt: torch.optim.Optimizer | None = None
        self._trainer: nn.Module = self.model

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Train through ``wrap(model)`` (a DistributedDataParallel wrapper); weights stay in ``model``."""
        self._trainer = wrap(self.model)

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().astype(np.float32, copy=True) for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self.model.eval()
        return self.model(torch.from_numpy(np.asarray(users, np.int64)),
                          torch.from_numpy(np.asarray(items, np.int64))).numpy()

    @torch.no_grad()
    def score_all(self, users: np.ndarray) -> np.ndarray:
        self.model.eval()
        return self.model.forward_all(torch.from_numpy(np.asarray(users, np.int64))).numpy()

    def train_epoch(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, lr: float,
                    on_batch: Callable[[int], object]) -> float:
        if self.config is None:
            raise ValueError("this backend was loaded for scoring only; pass an NCFConfig to train")
        cfg = self.config
        if self._opt is None:
            # AdamW with decoupled decay, the same update rule MLX's AdamW applies
            self._opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=cfg.weight_decay)
        for group in self._opt.param_groups:
            group["lr"] = lr
        self.model.train()
        threads = torch.get_num_threads()
        # a few-hundred-pair step is far too small for intra-op threads: they only add synchronisation, and
        # on a shared 2-core machine spinning workers made epochs 10-50x slower than one thread
        torch.set_num_threads(1)
        try:
            return self._epoch(users, items, labels, cfg, on_batch)
        finally:
            torch.set_num_threads(threads)

    def _epoch(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, cfg: NCFConfig,
               on_batch: Callable[[int], object]) -> float:
        assert self._opt is not None
        u = torch.from_numpy(np.asarray(users, np.int64))
        i = torch.from_numpy(np.asarray(items, np.int64))
        y = torch.from_numpy(np.asarray(labels, np.float32))
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(u), cfg.batch_size):
            sl = slice(start, start + cfg.batch_size)
            self._opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(self._trainer(u[sl], i[sl]), y[sl])
            loss.backward()
            if cfg.clip_norm > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
            self._opt.step()
            total += loss.detach() * len(y[sl])
            on_batch(1)
        return float(total) / max(1, len(u))
