"""PyTorch backend of SASRec (model, layout and training rules: ``online_models.sasrec_spec``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from online_models.sasrec_spec import LAYER_NORM_EPS, MASKED, Batch, SASRecConfig, check_weights

# A step is a few MFLOP per op: intra-op threads mostly add synchronisation on a shared 2-core machine
TRAIN_THREADS = 1


class _Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.attn = _Attention(d)
        self.ffn_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(d, d)
        self.ffn_out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, heads: int, p: float) -> torch.Tensor:
        b, length, d = x.shape
        qkv = self.attn.qkv(self.attn_norm(x)).reshape(b, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, L, dh)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads) + mask, dim=-1)
        att = F.dropout(att, p, self.training)
        o = (att @ v).transpose(1, 2).reshape(b, length, d)
        x = x + F.dropout(self.attn.out(o), p, self.training)
        f = self.ffn_out(F.dropout(F.relu(self.ffn_in(self.ffn_norm(x))), p, self.training))
        return x + F.dropout(f, p, self.training)


class _SASRec(nn.Module):
    def __init__(self, n_items: int, d: int, max_len: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, d)
        self.pos_emb = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.heads, self.p, self.max_len = heads, dropout, max_len

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        length = seqs.shape[1]
        d = self.item_emb.weight.shape[1]
        # right-aligned windows: a narrower one uses the last rows, so a song's position embedding
        # depends on its distance from the newest play, never on the batch's width
        x = self.item_emb(seqs) * math.sqrt(d) + self.pos_emb.weight[self.max_len - length:]
        x = F.dropout(x, self.p, self.training)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        # padding keys are hidden; every query still sees itself, so a padding row is never all-masked
        allowed = (causal & (seqs != 0)[:, None, :]) | torch.eye(length, dtype=torch.bool)
        mask = torch.where(allowed, 0.0, MASKED)[:, None, :, :]
        for block in self.blocks:
            x = block(x, mask, self.heads, self.p)
        return self.final_norm(x)


def _position_loss(h: torch.Tensor, emb: torch.Tensor, batch: Batch, loss: str) -> torch.Tensor:
    targets = torch.from_numpy(batch.targets)
    if loss == "full":
        logits = h @ emb[1:].T
        return torch.logsumexp(logits, -1) - logits.gather(1, (targets - 1)[:, None])[:, 0]
    pos = (h * emb[targets]).sum(-1)
    negs = torch.from_numpy(batch.negatives)
    if loss == "bce":
        return F.softplus(-pos) + F.softplus((h * emb[negs[:, 0]]).sum(-1))
    neg = torch.where(negs[None, :] == targets[:, None], MASKED, h @ emb[negs].T)
    extra = torch.from_numpy(batch.extra_negatives)
    ex = torch.einsum("pd,psd->ps", h, emb[extra])
    ex = torch.where((extra == 0) | (extra == targets[:, None]), MASKED, ex)
    return torch.logsumexp(torch.cat([pos[:, None], neg, ex], dim=1), -1) - pos


class TorchSASRec:
    """SASRec on PyTorch (CPU), holding weights in the shared layout."""

    def __init__(self, weights: dict[str, np.ndarray], heads: int, config: SASRecConfig | None = None) -> None:
        dims = check_weights(weights)
        self.model = _SASRec(dims.n_items, dims.factors, dims.max_len, dims.blocks, heads,
                             config.dropout if config else 0.0)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
        self.config = config
        self._opt: torch.optim.Optimizer | None = None
        self._trainer: nn.Module = self.model
        # dropout draws from a private generator state, so training never disturbs (or depends on) the
        # process-wide torch RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed if config else 0)
            self._rng_state = torch.get_rng_state()

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Train through ``wrap(model)`` (a DistributedDataParallel wrapper); weights stay in ``model``."""
        self._trainer = wrap(self.model)

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().astype(np.float32, copy=True) for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def hidden(self, sequences: np.ndarray) -> np.ndarray:
        self.model.eval()
        return self.model(torch.from_numpy(np.asarray(sequences, np.int64))).numpy()

    def train_epoch(self, batches: Sequence[Batch], lr: float, on_batch: Callable[[int], object]) -> float:
        if self.config is None:
            raise ValueError("this backend was loaded for scoring only; pass a SASRecConfig to train")
        cfg = self.config
        if self._opt is None:
            # AdamW with decoupled decay: the update rule MLX's AdamW applies
            self._opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8,
                                          weight_decay=cfg.weight_decay)
        for group in self._opt.param_groups:
            group["lr"] = lr
        self.model.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(TRAIN_THREADS)
        total, count = 0.0, 0.0
        try:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self._rng_state)
                for batch in batches:
                    loss_sum, n = self._step(batch, cfg)
                    total, count = total + loss_sum, count + n
                    on_batch(1)
                self._rng_state = torch.get_rng_state()
        finally:
            torch.set_num_threads(threads)
        return total / max(count, 1.0)

    def _step(self, batch: Batch, cfg: SASRecConfig) -> tuple[float, float]:
        assert self._opt is not None
        self._opt.zero_grad(set_to_none=True)
        states = self._trainer(torch.from_numpy(batch.inputs))
        h = states.reshape(-1, states.shape[-1])[torch.from_numpy(batch.flat_pos)]
        w = torch.from_numpy(batch.weights)
        n = float(batch.weights.sum())
        loss = (_position_loss(h, self.model.item_emb.weight, batch, cfg.loss) * w).sum() / max(n, 1.0)
        loss.backward()
        if cfg.clip_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        self._opt.step()
        return float(loss.detach()) * n, n
