"""SASRec in the leave-last-out evaluation: ``sasrec`` (PyTorch) and ``sasrec-mlx``.

A user's vector is the SASRec state after their training plays in time order; songs are scored by
dot product with the item embeddings, exactly what serving does. Users without a play of a trained
song fall back to popularity, as for every scorer of ``offline.loo``.
"""

from __future__ import annotations

import numpy as np

from offline.scorers import _DotScorer
from online_models.batch import EventBatch
from online_models.sasrec import SASRecConfig, build_sequences, right_aligned
from online_models.sasrec_train import train_sasrec

_ENCODE_CHUNK = 512


class SASRecScorer(_DotScorer):
    def __init__(self, backend: str = "torch", config: SASRecConfig | None = None,
                 show_progress: bool = False) -> None:
        super().__init__()
        self.backend, self.config, self.show_progress = backend, config or SASRecConfig(), show_progress
        self.name = "sasrec" + ("" if backend == "torch" else f"-{backend}")
        self.model_metrics: dict[str, object] = {}

    def _fit(self, train: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        model = train_sasrec(train, self.config, self.backend, show_progress=self.show_progress)
        self.model_metrics = model.metrics
        encoder = model.encoder()
        seqs = build_sequences(train, self.config.repeats, model.item_names)
        has = np.flatnonzero(seqs.lengths > 0)
        states = [encoder.encode(right_aligned([seqs.of(u) for u in has[i:i + _ENCODE_CHUNK]], self.config.max_len))
                  for i in range(0, len(has), _ENCODE_CHUNK)]
        self._uf = np.concatenate(states) if states else np.empty((0, self.config.factors), np.float32)
        self._if = encoder.item_embeddings
        return seqs.users[has], model.item_names
