"""MLX backend of SASRec (model, layout and training rules: ``online_models.sasrec_spec``).

The maths is the PyTorch backend's line for line, so either can train and the other serve. Dropout
masks come from MLX's own generator (seeded from the config), so with dropout > 0 the two backends
see the same batches and negatives but not the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from online_models.sasrec_spec import LAYER_NORM_EPS, MASKED, Batch, SASRecConfig, check_weights


def _dropout(x: mx.array, p: float, train: bool) -> mx.array:
    if not train or p == 0.0:
        return x
    return x * mx.random.bernoulli(1.0 - p, x.shape) / (1.0 - p)


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

    def __call__(self, x: mx.array, mask: mx.array, heads: int, p: float, train: bool) -> mx.array:
        b, length, d = x.shape
        qkv = self.attn.qkv(self.attn_norm(x)).reshape(b, length, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = mx.softmax(q @ k.swapaxes(-1, -2) / math.sqrt(d // heads) + mask, axis=-1)
        att = _dropout(att, p, train)
        o = (att @ v).transpose(0, 2, 1, 3).reshape(b, length, d)
        x = x + _dropout(self.attn.out(o), p, train)
        f = self.ffn_out(_dropout(nn.relu(self.ffn_in(self.ffn_norm(x))), p, train))
        return x + _dropout(f, p, train)


class _SASRec(nn.Module):
    def __init__(self, n_items: int, d: int, max_len: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, d)
        self.pos_emb = nn.Embedding(max_len, d)
        self.blocks = [_Block(d) for _ in range(blocks)]
        self.final_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.n_heads, self.p, self.max_len = heads, dropout, max_len

    def __call__(self, seqs: mx.array, train: bool = False) -> mx.array:
        length = seqs.shape[1]
        d = self.item_emb.weight.shape[1]
        x = self.item_emb(seqs) * math.sqrt(d) + self.pos_emb.weight[self.max_len - length:]
        x = _dropout(x, self.p, train)
        causal = mx.tril(mx.ones((length, length), dtype=mx.bool_))
        allowed = (causal & (seqs != 0)[:, None, :]) | mx.eye(length, dtype=mx.bool_)
        mask = mx.where(allowed, 0.0, MASKED)[:, None, :, :]
        for block in self.blocks:
            x = block(x, mask, self.n_heads, self.p, train)
        return self.final_norm(x)


def _softplus(x: mx.array) -> mx.array:
    return mx.logaddexp(mx.zeros_like(x), x)


def _position_loss(h: mx.array, emb: mx.array, targets: mx.array, negs: mx.array, extra: mx.array,
                   loss: str) -> mx.array:
    if loss == "full":
        logits = h @ emb[1:].T
        return mx.logsumexp(logits, axis=-1) - mx.take_along_axis(logits, (targets - 1)[:, None], axis=1)[:, 0]
    pos = (h * emb[targets]).sum(-1)
    if loss == "bce":
        return _softplus(-pos) + _softplus((h * emb[negs[:, 0]]).sum(-1))
    neg = mx.where(negs[None, :] == targets[:, None], MASKED, h @ emb[negs].T)
    ex = mx.einsum("pd,psd->ps", h, emb[extra])
    ex = mx.where((extra == 0) | (extra == targets[:, None]), MASKED, ex)
    return mx.logsumexp(mx.concatenate([pos[:, None], neg, ex], axis=1), axis=-1) - pos


def _batch_loss(model: _SASRec, inputs: mx.array, flat_pos: mx.array, targets: mx.array, weights: mx.array,
                negs: mx.array, extra: mx.array, loss: str) -> mx.array:
    states = model(inputs, train=True)
    h = states.reshape(-1, states.shape[-1])[flat_pos]
    per = _position_loss(h, model.item_emb.weight, targets, negs, extra, loss)
    return (per * weights).sum() / mx.maximum(weights.sum(), 1.0)


class MLXSASRec:
    """SASRec on MLX, holding weights in the shared layout."""

    def __init__(self, weights: dict[str, np.ndarray], heads: int, config: SASRecConfig | None = None) -> None:
        dims = check_weights(weights)
        self.model = _SASRec(dims.n_items, dims.factors, dims.max_len, dims.blocks, heads,
                             config.dropout if config else 0.0)
        self.model.update(tree_unflatten([(k, mx.array(np.asarray(v, np.float32))) for k, v in weights.items()]))
        mx.eval(self.model.parameters())
        self.config = config
        self._step: Callable[..., Any] | None = None
        self._opt: optim.AdamW | None = None

    def weights(self) -> dict[str, np.ndarray]:
        flat: list[tuple[str, mx.array]] = tree_flatten(self.model.parameters())  # type: ignore[assignment]
        return {k: np.array(v, dtype=np.float32, copy=True) for k, v in flat}

    def hidden(self, sequences: np.ndarray) -> np.ndarray:
        return np.array(self.model(mx.array(np.asarray(sequences, np.int32))), dtype=np.float32)

    def _make_step(self, cfg: SASRecConfig, lr: float) -> Callable[..., Any]:
        # bias_correction=True: MLX defaults to False, PyTorch always corrects; the two must agree
        self._opt = optim.AdamW(learning_rate=lr, betas=[0.9, 0.98], eps=1e-8, weight_decay=cfg.weight_decay,
                                bias_correction=True)
        loss_and_grad = nn.value_and_grad(self.model, partial(_batch_loss, loss=cfg.loss))
        mx.random.seed(cfg.seed)
        # the generator's state is an implicit input/output too, or every compiled step would reuse one mask
        state = [self.model.state, self._opt.state, mx.random.state]
        opt = self._opt

        @partial(mx.compile, inputs=state, outputs=state)
        def step(*arrays: mx.array) -> mx.array:
            loss, grads = loss_and_grad(self.model, *arrays)
            if cfg.clip_norm > 0:
                grads, _ = optim.clip_grad_norm(grads, cfg.clip_norm)
            opt.update(self.model, grads)
            return loss

        return step

    def train_epoch(self, batches: Sequence[Batch], lr: float, on_batch: Callable[[int], object]) -> float:
        if self.config is None:
            raise ValueError("this backend was loaded for scoring only; pass a SASRecConfig to train")
        cfg = self.config
        if self._step is None:
            self._step = self._make_step(cfg, lr)
        assert self._opt is not None
        self._opt.learning_rate = mx.array(lr, dtype=mx.float32)
        state = [self.model.state, self._opt.state, mx.random.state]
        total, count = mx.array(0.0), 0.0
        for b in batches:
            n = float(b.weights.sum())
            loss = self._step(mx.array(b.inputs.astype(np.int32)), mx.array(b.flat_pos.astype(np.int32)),
                              mx.array(b.targets.astype(np.int32)), mx.array(b.weights),
                              mx.array(b.negatives.astype(np.int32)), mx.array(b.extra_negatives.astype(np.int32)))
            total = total + loss * n
            count += n
            mx.eval(total, state)
            on_batch(1)
        return float(np.array(total)) / max(count, 1.0)
