"""The models as the leave-last-out evaluation sees them (``offline.loo``): each fits on events and
scores or ranks songs by name, with one policy for users and songs it never saw."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from index_manager.artifacts import ModelArtifact
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig
from online_models.interactions import Interactions
from online_models.ncf import NCFScorer
from online_models.ncf_config import NCFConfig
from online_models.ranking import take_top

MODELS = ("als", "als-tuned", "hybrid", "ease", "ncf", "ncf-mlx", "ncf-rerank", "ncf-dot", "implicit-als",
          "implicit-als-tuned", "implicit-bpr", "implicit-bpr-tuned", "popularity", "sasrec", "sasrec-mlx")
# models whose hyper-parameters ``offline.loo_tune`` chooses on the log's early half before they are fitted
TUNED = ("als-tuned", "hybrid", "ease", "implicit-als-tuned", "implicit-bpr-tuned")
RERANK_CANDIDATES = 200
# (users x songs) cells scored per chunk in full-catalog ranking: ~16 MB of float64 scores
_CHUNK_CELLS = 1 << 21


@runtime_checkable
class Scorer(Protocol):
    """A model as the evaluation sees it.

    ``score`` gives higher-is-better scores for each user's candidate songs; a song the model did not
    see in training scores -inf (it cannot be recommended), and a user it did not see gets the songs'
    training popularity. ``top`` returns each user's ``k`` best songs among those the model knows,
    excluding the user's training interactions, padded with "". ``fit_s`` is the training time.
    """

    name: str
    fit_s: float

    def fit(self, train: EventBatch) -> None: ...

    def score(self, user_ids: np.ndarray, song_ids: np.ndarray) -> np.ndarray: ...

    def top(self, user_ids: np.ndarray, k: int) -> np.ndarray: ...


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest finite scores, best first (ties: lower index), -1 pad."""
    columns = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return take_top(columns, scores, np.ones(scores.shape, bool), k)[0]


class _RowScorer:
    """Maps names to the model's rows, applies the unknown-user/song policy, ranks the catalog.

    Subclasses fit a model (``_fit`` returns its user and song names in row order) and score rows."""

    name = "base"

    def __init__(self) -> None:
        self.fit_s = float("nan")
        self._users = np.empty(0, object)
        self._songs = np.empty(0, object)
        self._user_row: dict[str, int] = {}
        self._song_row: dict[str, int] = {}
        self._seen = sp.csr_matrix((0, 0))
        self._pop = np.empty(0)

    def _fit(self, train: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _score_rows(self, users: np.ndarray, songs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: EventBatch) -> None:
        if not isinstance(train, EventBatch) or len(train) == 0:
            raise ValueError("fit needs a non-empty EventBatch")
        self.fit_s = float("nan")
        started = time.perf_counter()
        users, songs = self._fit(train)
        if np.isnan(self.fit_s):  # a shared, already trained model reports its own training time
            self.fit_s = time.perf_counter() - started
        self._users, self._songs = np.asarray(users, object), np.asarray(songs, object)
        self._user_row = {u: i for i, u in enumerate(self._users.tolist())}
        self._song_row = {s: i for i, s in enumerate(self._songs.tolist())}
        ur, sr = self._rows(self._user_row, train.user_ids), self._rows(self._song_row, train.song_ids)
        ok = (ur >= 0) & (sr >= 0)
        self._seen = sp.csr_matrix((np.ones(int(ok.sum()), np.int8), (ur[ok], sr[ok])),
                                   shape=(len(self._users), len(self._songs)))
        self._seen.sum_duplicates()
        played = ok & (train.kinds == PLAY)
        distinct = np.unique(ur[played].astype(np.int64) * len(self._songs) + sr[played])
        self._pop = np.bincount(distinct % max(1, len(self._songs)), minlength=len(self._songs)).astype(np.float64)

    @staticmethod
    def _rows(lookup: dict[str, int], names: np.ndarray) -> np.ndarray:
        get = lookup.get
        flat = np.asarray(names, dtype=object).ravel()
        return np.fromiter((get(n, -1) for n in flat), np.int64, len(flat)).reshape(np.shape(names))

    def score(self, user_ids: np.ndarray, song_ids: np.ndarray) -> np.ndarray:
        users = np.asarray(user_ids, dtype=object)
        songs = np.asarray(song_ids, dtype=object)
        if users.ndim != 1 or songs.ndim != 2 or len(songs) != len(users):
            raise ValueError(f"user_ids must be (U,) and song_ids (U, C), got {users.shape} and {songs.shape}")
        ur, sr = self._rows(self._user_row, users), self._rows(self._song_row, songs)
        out = np.full(songs.shape, -np.inf)
        known = ur >= 0
        if known.any():
            out[known] = self._score_rows(ur[known], np.maximum(sr[known], 0))
        if (~known).any():
            out[~known] = self._pop[np.maximum(sr[~known], 0)] if len(self._pop) else -np.inf
        return np.where(sr >= 0, out, -np.inf)

    def _top_rows(self, users: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((len(users), k), dtype=np.int64)
        step = max(1, _CHUNK_CELLS // max(1, len(self._songs)))
        for start in range(0, len(users), step):
            chunk = users[start:start + step]
            scores = self._score_all(chunk).astype(np.float64)
            seen = self._seen[chunk].tocoo()
            scores[seen.row, seen.col] = -np.inf
            out[start:start + step] = _top_columns(scores, k)
        return out

    def top(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        users = np.asarray(user_ids, dtype=object)
        if users.ndim != 1:
            raise ValueError(f"user_ids must be 1-d, got shape {users.shape}")
        if not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        ur = self._rows(self._user_row, users)
        rows = np.full((len(users), k), -1, dtype=np.int64)
        known = ur >= 0
        if known.any():
            rows[known] = self._top_rows(ur[known], k)
        if (~known).any():
            rows[~known] = _top_columns(self._pop[None, :], k)[0]
        return np.where(rows >= 0, self._songs[np.maximum(rows, 0)] if len(self._songs) else "", "").astype(object)


class PopularityScorer(_RowScorer):
    """Songs ranked by how many users played them in training, the same list for everyone."""

    name = "popularity"

    def _fit(self, train: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(train.user_ids), np.unique(train.song_ids)

    def _score_rows(self, users: np.ndarray, songs: np.ndarray) -> np.ndarray:
        return self._pop[songs]

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._pop, (len(users), len(self._pop)))


class _DotScorer(_RowScorer):
    """Score = user factors · item factors."""

    def __init__(self) -> None:
        super().__init__()
        self._uf = np.empty((0, 0), np.float32)
        self._if = np.empty((0, 0), np.float32)

    def _score_rows(self, users: np.ndarray, songs: np.ndarray) -> np.ndarray:
        return np.einsum("uf,ucf->uc", self._uf[users], self._if[songs])

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return self._uf[users] @ self._if.T


class ALSScorer(_DotScorer):
    """This project's ALS: ``train_als`` on the engagement table built exactly as the online state
    builds it (recency decay, skips as confident zero preferences), default ``OnlineConfig``."""

    name = "als"

    def __init__(self, config: OnlineConfig | None = None) -> None:
        super().__init__()
        self.config = config or OnlineConfig()

    def _fit(self, train: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        from online_models.als import train_als

        art = train_als(Interactions.from_events(train, self.config), self.config)
        self._uf, self._if = art.user_factors, art.item_factors
        return art.user_names, art.song_names


def _play_matrix(train: EventBatch) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """users x songs play counts (skips ignored) over every user and song in ``train``."""
    users, ur = np.unique(train.user_ids, return_inverse=True)
    songs, sr = np.unique(train.song_ids, return_inverse=True)
    play = train.kinds == PLAY
    mat = sp.csr_matrix((np.ones(int(play.sum()), np.float32), (ur[play], sr[play])),
                        shape=(len(users), len(songs)))
    mat.sum_duplicates()
    return mat, users, songs


class ImplicitScorer(_DotScorer):
    """implicit's ALS or BPR on the play-count matrix, with the library's default hyper-parameters or
    the given ``params`` (keyword arguments of the implicit model, e.g. chosen by ``offline.loo_tune``).

    ``random_state`` is set (reproducibility) and, for BPR, one thread: its Hogwild updates are
    otherwise order-dependent and the figures would change from run to run."""

    def __init__(self, kind: str, seed: int = 0, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        if kind not in ("als", "bpr"):
            raise ValueError(f"unknown implicit model {kind!r}")
        self.kind, self.seed, self.params = kind, seed, dict(params or {})
        if {"random_state", "num_threads"} & set(self.params):
            raise ValueError("random_state and num_threads are set by the scorer")
        self.name = f"implicit-{kind}" + ("-tuned" if params is not None else "")

    def _fit(self, train: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        from threadpoolctl import threadpool_limits

        mat, users, songs = _play_matrix(train)
        with threadpool_limits(1, "blas"):
            if self.kind == "als":
                from implicit.als import AlternatingLeastSquares

                model: Any = AlternatingLeastSquares(random_state=self.seed, **self.params)
            else:
                from implicit.bpr import BayesianPersonalizedRanking

                model = BayesianPersonalizedRanking(random_state=self.seed, num_threads=1, **self.params)
            model.fit(mat, show_progress=False)
        self._uf = np.asarray(model.user_factors, dtype=np.float32)
        self._if = np.asarray(model.item_factors, dtype=np.float32)
        return users, songs


class NCFEvalScorer(_RowScorer):
    """NeuMF, scored three ways from one trained model (shared through ``cache``):

    * ``full``: every score is the NeuMF logit, top-k over the whole catalog;
    * ``rerank``: top-k is the NeuMF re-ranking of the best ``RERANK_CANDIDATES`` songs by GMF dot
      product (the serving path: FAISS retrieval, then the network); its sampled metrics equal
      ``full``'s, because retrieving 200 songs from 100 candidates keeps them all;
    * ``dot``: the GMF retrieval score alone (``user_factors · item_factors``).
    """

    def __init__(self, mode: str = "full", backend: str = "torch", config: NCFConfig | None = None,
                 cache: dict[str, tuple[ModelArtifact, float]] | None = None, show_progress: bool = False) -> None:
        super().__init__()
        if mode not in ("full", "rerank", "dot"):
            raise ValueError(f"unknown NCF scoring mode {mode!r}")
        self.mode, self.backend, self.config = mode, backend, config or NCFConfig()
        self.cache = {} if cache is None else cache
        self.show_progress = show_progress
        suffix = {"full": "", "rerank": "-rerank", "dot": "-dot"}[mode]
        self.name = f"ncf{suffix}" + ("" if backend == "torch" else f"-{backend}")
        self._net: NCFScorer | None = None
        self._uf = np.empty((0, 0), np.float32)
        self._if = np.empty((0, 0), np.float32)

    def _fit(self, train: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        from online_models.ncf_train import train_ncf

        if self.backend not in self.cache:
            started = time.perf_counter()
            art = train_ncf(Interactions.from_events(train, OnlineConfig()), self.config, self.backend,
                            show_progress=self.show_progress)
            self.cache[self.backend] = (art, time.perf_counter() - started)
        art, self.fit_s = self.cache[self.backend]
        self._net = NCFScorer.from_artifact(art, self.backend)
        self._uf, self._if = art.user_factors, art.item_factors
        return art.user_names, art.song_names

    @property
    def net(self) -> NCFScorer:
        if self._net is None:
            raise ValueError("the NCF scorer is not fitted")
        return self._net

    def _score_rows(self, users: np.ndarray, songs: np.ndarray) -> np.ndarray:
        if self.mode == "dot":
            return np.einsum("uf,ucf->uc", self._uf[users], self._if[songs])
        return self.net.score(users, songs)

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return self._uf[users] @ self._if.T if self.mode != "full" else self.net.score_all(users)

    def _top_rows(self, users: np.ndarray, k: int) -> np.ndarray:
        if self.mode != "rerank":
            return super()._top_rows(users, k)
        cands = super()._top_rows(users, max(k, RERANK_CANDIDATES))  # GMF dot, training songs excluded
        scores = np.where(cands >= 0, self.net.score(users, np.maximum(cands, 0)).astype(np.float64), -np.inf)
        best = _top_columns(scores, k)
        return np.where(best >= 0, np.take_along_axis(cands, np.maximum(best, 0), axis=1), -1)


def make_scorer(name: str, seed: int = 0, ncf_config: NCFConfig | None = None,
                cache: dict[str, Any] | None = None, show_progress: bool = False,
                params: dict[str, Any] | None = None) -> Scorer:
    """A fresh scorer by model name (see ``MODELS``); scorers given one ``cache`` share fits (the NCF
    variants one network, ``hybrid`` and ``ease`` one EASE table). The ``TUNED`` models need ``params``,
    the hyper-parameters ``offline.loo_tune`` chose for them."""
    ncf = ncf_config or NCFConfig()
    if name in TUNED and params is None:
        raise ValueError(f"{name} needs its tuned parameters (offline.loo_tune.tune_loo chooses them)")
    if name in ("als", "als-tuned"):
        scorer = ALSScorer(replace(OnlineConfig(), seed=seed, **(params or {})))
        scorer.name = name
        return scorer
    if name in ("hybrid", "ease"):
        from offline.loo_models import HybridScorer

        return HybridScorer(name, params or {}, seed, cache)
    if name in ("ncf", "ncf-mlx", "ncf-rerank", "ncf-dot"):
        mode = {"ncf": "full", "ncf-mlx": "full", "ncf-rerank": "rerank", "ncf-dot": "dot"}[name]
        return NCFEvalScorer(mode, "mlx" if name == "ncf-mlx" else "torch", ncf, cache, show_progress)
    if name in ("implicit-als", "implicit-bpr", "implicit-als-tuned", "implicit-bpr-tuned"):
        implicit = ImplicitScorer(name.split("-")[1], seed, params)
        implicit.name = name
        return implicit
    if name == "popularity":
        return PopularityScorer()
    if name in ("sasrec", "sasrec-mlx"):
        from offline.loo_sasrec import SASRecConfig, SASRecScorer  # imports this module: loaded on first use

        return SASRecScorer("mlx" if name == "sasrec-mlx" else "torch", SASRecConfig(seed=seed), show_progress)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
