"""Hyper-parameters of the online recommender, each declared once (type, default, env var, doc).

``stream.settings`` reads these declarations to load values from the environment or a TOML file;
this package itself never reads the environment. Defaults are conventional values from the ALS/iALS
literature and product rules (a play counts fully after 30 s), not figures fitted to a data file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def setting(default: object, env: str, doc: str) -> object:
    """A dataclass field carrying its environment variable and documentation."""
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class OnlineConfig:
    factors: int = setting(64, "MUSICREC_FACTORS", "Latent factors of ALS / width of the retrieval space.")  # type: ignore[assignment]
    regularization: float = setting(0.05, "MUSICREC_REGULARIZATION", "L2 regularisation of ALS training and of the online fold-in.")  # type: ignore[assignment]
    alpha: float = setting(10.0, "MUSICREC_ALPHA", "Confidence scale: c = 1 + alpha * decayed engagement.")  # type: ignore[assignment]
    iterations: int = setting(15, "MUSICREC_ALS_ITERATIONS", "ALS training sweeps.")  # type: ignore[assignment]
    half_life_days: float = setting(90.0, "MUSICREC_HALF_LIFE_DAYS", "Half-life of a user's engagement with a song (recency decay); 0 disables decay.")  # type: ignore[assignment]
    skip_weight: float = setting(1.0, "MUSICREC_SKIP_WEIGHT", "Negative engagement added by one skip (a full play adds 1).")  # type: ignore[assignment]
    full_play_ms: float = setting(30000.0, "MUSICREC_FULL_PLAY_MS", "ms_played at which a play counts fully; shorter plays count proportionally.")  # type: ignore[assignment]
    max_history: int = setting(500, "MUSICREC_MAX_HISTORY", "Songs kept per user in online state (the weakest are dropped).")  # type: ignore[assignment]
    relisten: bool = setting(False, "MUSICREC_RELISTEN", "Allow songs the user already played back into their recommendations.")  # type: ignore[assignment]
    popularity_half_life_days: float = setting(30.0, "MUSICREC_POPULARITY_HALF_LIFE_DAYS", "Half-life of song popularity counts used for cold start.")  # type: ignore[assignment]
    cold_start_events: float = setting(5.0, "MUSICREC_COLD_START_EVENTS", "History size at which collaborative scores and popularity weigh equally.")  # type: ignore[assignment]
    candidates: int = setting(100, "MUSICREC_CANDIDATES", "Extra songs fetched from the index per user to make room for filtering out what they heard (100: equal recall to 200 on the early Last.fm window, 40% faster).")  # type: ignore[assignment]
    foldin_cg_steps: int = setting(3, "MUSICREC_FOLDIN_CG_STEPS", "Conjugate-gradient steps when re-solving a user from their cached vector; 0 = always the exact solve.")  # type: ignore[assignment]
    vector_cache: int = setting(200_000, "MUSICREC_VECTOR_CACHE", "Users whose folded-in vectors are kept between batches (LRU).")  # type: ignore[assignment]
    new_song_norm_quantile: float = setting(0.9, "MUSICREC_NEW_SONG_NORM_QUANTILE", "Exposure policy for songs nobody has played yet: their content vector gets this quantile of trained songs' vector norms.")  # type: ignore[assignment]
    diversity: float = setting(0.0, "MUSICREC_DIVERSITY", "MMR trade-off in [0, 1): 0 ranks by relevance only; higher values penalise songs similar to ones already in the list.")  # type: ignore[assignment]
    seed: int = setting(0, "MUSICREC_SEED", "Random seed for training.")  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.factors <= 0 or self.iterations <= 0 or self.max_history <= 0 or self.candidates <= 0:
            raise ValueError("factors, iterations, max_history and candidates must be positive")
        if self.regularization < 0 or self.alpha < 0 or self.skip_weight < 0 or self.full_play_ms <= 0:
            raise ValueError("regularization, alpha and skip_weight must be >= 0, full_play_ms > 0")
        if not 0.0 <= self.diversity < 1.0:
            raise ValueError("diversity must be within [0, 1)")
        if not 0.0 <= self.new_song_norm_quantile <= 1.0:
            raise ValueError("new_song_norm_quantile must be within [0, 1]")
        if self.foldin_cg_steps < 0 or self.vector_cache < 0:
            raise ValueError("foldin_cg_steps and vector_cache must be >= 0")
        if self.half_life_days < 0 or self.popularity_half_life_days < 0 or self.cold_start_events < 0:
            raise ValueError("half-lives and cold_start_events must be >= 0")
