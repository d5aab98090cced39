"""A ranker over the candidates' signal scores that learns its own weights from the stream.

Every play is a lesson: among the candidates its user had just before it, the song they chose
should score highest. The score of a (user, candidate) pair with signal features ``f`` is

    w_b · f  +  v · relu(W f + c)

with one linear weight vector per history-size bucket ``b`` (cold users lean on popularity, warm
ones on collaborative signals, and each stream says how much) and one small hidden layer shared by
all (a signal that matters only when another is weak). It is trained by a softmax (listwise) loss
over each user's candidates with AdaGrad. The hidden part starts at zero, so an untrained ranker is
the linear one, and ``initial`` says what that is (the product starts from popularity).

Plays of songs outside the candidates teach nothing: adding the chosen song to the softmax when no
source proposed it would reward whatever marks a song as *not* a candidate.
"""

from __future__ import annotations

import numpy as np

_ADAGRAD_START = 1e-2  # initial squared-gradient sum: the first steps move by ~learning_rate


class Ranker:
    def __init__(self, n_features: int, hidden: int = 16, buckets: tuple[int, ...] = (1, 3, 10, 30),
                 learning_rate: float = 0.05, initial: np.ndarray | None = None, seed: int = 0) -> None:
        if n_features <= 0 or hidden < 0 or learning_rate <= 0:
            raise ValueError("n_features and learning_rate must be positive, hidden >= 0")
        if list(buckets) != sorted(set(buckets)) or any(b <= 0 for b in buckets):
            raise ValueError("buckets must be increasing positive history sizes")
        start = np.zeros(n_features) if initial is None else np.asarray(initial, np.float64)
        if start.shape != (n_features,):
            raise ValueError(f"initial weights must have shape ({n_features},)")
        self.buckets = np.asarray(buckets, np.int64)
        self.learning_rate = learning_rate
        rng = np.random.default_rng(seed)
        self.linear = np.tile(start, (len(buckets) + 1, 1))
        self.hidden_w = rng.normal(0.0, 1.0 / np.sqrt(n_features), (n_features, hidden))
        self.hidden_b = np.zeros(hidden)
        self.out = np.zeros(hidden)
        self._params = (self.linear, self.hidden_w, self.hidden_b, self.out)
        self._g2 = tuple(np.full(p.shape, _ADAGRAD_START) for p in self._params)
        self.lessons = 0

    @property
    def n_features(self) -> int:
        return int(self.linear.shape[1])

    def bucket(self, history_sizes: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.buckets, np.asarray(history_sizes), side="right")

    def _check(self, features: np.ndarray, history_sizes: np.ndarray) -> None:
        if features.ndim != 3 or features.shape[2] != self.n_features:
            raise ValueError(f"features must have shape (users, candidates, {self.n_features}), got {features.shape}")
        if np.shape(history_sizes) != features.shape[:1]:
            raise ValueError("history_sizes must have one entry per user")

    def _forward(self, features: np.ndarray, history_sizes: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        b = self.bucket(history_sizes)
        # BLAS products: a score may then differ in its last bits with the number of users in the
        # call, which the float32 the lists are ranked in absorbs
        dtype = features.dtype
        pre = features @ self.hidden_w.astype(dtype) + self.hidden_b.astype(dtype)
        h = np.maximum(pre, 0)
        linear = np.einsum("umd,ud->um", features, self.linear[b].astype(dtype))
        return linear + h @ self.out.astype(dtype), b, pre, h

    def score(self, features: np.ndarray, history_sizes: np.ndarray) -> np.ndarray:
        """(U, M) scores of (U, M, d) features for users with the given history sizes."""
        self._check(features, history_sizes)
        return self._forward(features, history_sizes)[0]

    def learn(self, features: np.ndarray, allowed: np.ndarray, chosen: np.ndarray,
              history_sizes: np.ndarray) -> int:
        """One AdaGrad step: row i chose candidate ``chosen[i]`` (-1: none of them) among its
        ``allowed`` ones. Returns the number of plays learnt from."""
        self._check(features, history_sizes)
        if allowed.shape != features.shape[:2] or np.shape(chosen) != features.shape[:1]:
            raise ValueError("allowed must be (users, candidates) and chosen (users,)")
        rows = np.flatnonzero(chosen >= 0)
        rows = rows[allowed[rows, chosen[rows]]]
        if not len(rows):
            return 0
        f, ok, pick = features[rows], allowed[rows], chosen[rows]
        z, b, pre, h = self._forward(f, np.asarray(history_sizes)[rows])
        z = np.where(ok, z, -np.inf)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dz = -p  # d log-likelihood / d score: one-hot of the chosen song minus the softmax
        dz[np.arange(len(rows)), pick] += 1.0
        g_linear = np.zeros_like(self.linear)
        np.add.at(g_linear, b, np.einsum("um,umd->ud", dz, f))
        dh = dz[..., None] * self.out * (pre > 0)
        grads = (g_linear, np.tensordot(f, dh, axes=([0, 1], [0, 1])), dh.sum(axis=(0, 1)),
                 np.tensordot(dz, h, axes=([0, 1], [0, 1])))
        for param, grad, acc in zip(self._params, grads, self._g2, strict=True):
            acc += grad ** 2
            param += self.learning_rate * grad / np.sqrt(acc)
        self.lessons += len(rows)
        return len(rows)
