"""Hyper-parameters of the online recommender, and the ``setting`` declaration every config uses.

Each setting is declared once: type, default, environment variable, doc and its allowed range
(``gt``/``ge``/``lt``/``le``/``choices``), checked by :func:`check_ranges` from the declaration.
``stream.settings`` reads these declarations to load values from the environment or a TOML file;
this package itself never reads the environment. Defaults are conventional values from the
ALS/iALS literature and product rules (a play counts fully after 30 s), not figures fitted to a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: T, env: str, doc: str, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None, choices: Sequence[str] | None = None) -> T:
    """A dataclass field carrying its environment variable, documentation and allowed range."""
    bounds = {name: v for name, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"env": env, "doc": doc, "bounds": bounds,
                                            "choices": tuple(choices) if choices else None})


_RULES = {"gt": (lambda v, b: v > b, "> {}"), "ge": (lambda v, b: v >= b, ">= {}"),
          "lt": (lambda v, b: v < b, "< {}"), "le": (lambda v, b: v <= b, "<= {}")}


def _one_of(choices: Sequence[str]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]


def check_ranges(config: Any) -> None:
    """Raise ValueError, naming the environment variable, for the first value outside its declared range."""
    for f in fields(config):
        value, env = getattr(config, f.name), f.metadata.get("env", f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{env} must be {_one_of(choices)}, got {value!r}")
        for rule, bound in f.metadata.get("bounds", {}).items():
            holds, wanted = _RULES[rule]
            if not holds(value, bound):
                raise ValueError(f"{env} must be {'positive' if (rule, bound) == ('gt', 0) else wanted.format(bound)}, "
                                 f"got {value!r}")


@dataclass(frozen=True)
class OnlineConfig:
    factors: int = setting(64, "MUSICREC_FACTORS", "Latent factors of ALS / width of the retrieval space.", gt=0)
    regularization: float = setting(0.05, "MUSICREC_REGULARIZATION", "L2 regularisation of ALS training and of the online fold-in.", ge=0)
    alpha: float = setting(10.0, "MUSICREC_ALPHA", "Confidence scale: c = 1 + alpha * decayed engagement.", ge=0)
    iterations: int = setting(15, "MUSICREC_ALS_ITERATIONS", "ALS training sweeps.", gt=0)
    half_life_days: float = setting(90.0, "MUSICREC_HALF_LIFE_DAYS", "Half-life of a user's engagement with a song (recency decay); 0 disables decay.", ge=0)
    skip_weight: float = setting(1.0, "MUSICREC_SKIP_WEIGHT", "Negative engagement added by one skip (a full play adds 1).", ge=0)
    full_play_ms: float = setting(30000.0, "MUSICREC_FULL_PLAY_MS", "ms_played at which a play counts fully; shorter plays count proportionally.", gt=0)
    max_history: int = setting(500, "MUSICREC_MAX_HISTORY", "Songs kept per user in online state (the weakest are dropped).", gt=0)
    relisten: str = setting("learn", "MUSICREC_RELISTEN", "Songs a user already played: `learn` makes their latest plays candidates with signals of how recently and how much they played each, and the ranker learns from the stream how often its users go back to a song; `never` filters them out; `always` lets them compete on the other signals alone. Models that cannot learn (the baselines) treat `learn` as `never`.", choices=("learn", "never", "always"))
    popularity_half_lives: str = setting("500,2000,8000,32000,128000,512000,2000000,0", "MUSICREC_POPULARITY_HALF_LIVES", "Half-lives of song popularity, in events (0 = never decays), all counted at once: the ranker weighs them, and the popular list uses the one whose lists caught the most plays so far.")
    cold_start_events: float = setting(5.0, "MUSICREC_COLD_START_EVENTS", "Songs the model must know of a user before NeuMF re-ranks their list (half of it collaborative).", ge=0)
    candidates: int = setting(50, "MUSICREC_CANDIDATES", "Extra songs a source proposes per user to make room for filtering out what they heard (50: equal recall to 100 on the early half of Last.fm and MovieLens, faster).", gt=0)
    foldin_cg_steps: int = setting(3, "MUSICREC_FOLDIN_CG_STEPS", "Conjugate-gradient steps when re-solving a user from their cached vector; 0 = always the exact solve.", ge=0)
    vector_cache: int = setting(200_000, "MUSICREC_VECTOR_CACHE", "Users whose folded-in vectors are kept between batches (LRU).", ge=0)
    new_song_norm_quantile: float = setting(0.9, "MUSICREC_NEW_SONG_NORM_QUANTILE", "Exposure policy for songs nobody has played yet: their content vector gets this quantile of trained songs' vector norms.", ge=0, le=1)
    diversity: float = setting(0.0, "MUSICREC_DIVERSITY", "MMR trade-off in [0, 1): 0 ranks by relevance only; higher values penalise songs similar to ones already in the list.", ge=0, lt=1)
    recent_plays: int = setting(50, "MUSICREC_RECENT_PLAYS", "Latest plays kept per user in order: the window of song co-occurrence and the input of a sequence model.", gt=0)
    cooc_neighbours: int = setting(100, "MUSICREC_COOC_NEIGHBOURS", "Strongest co-played songs kept per song (bounds the co-occurrence memory).", gt=0)
    cooc_half_life_events: float = setting(0.0, "MUSICREC_COOC_HALF_LIFE_EVENTS", "Half-life of co-occurrence votes in events; 0 = no decay (memory is bounded by MUSICREC_COOC_NEIGHBOURS).", ge=0)
    cooc_query: int = setting(30, "MUSICREC_COOC_QUERY", "Latest plays of a user whose co-played songs become candidates (at most MUSICREC_RECENT_PLAYS).", gt=0)
    cooc_candidates: int = setting(20, "MUSICREC_COOC_CANDIDATES", "Songs per user proposed by co-occurrence with their recent plays (its votes are a signal on every candidate; as a source it brings songs newer than the model).", gt=0)
    ranker_hidden: int = setting(16, "MUSICREC_RANKER_HIDDEN", "Hidden units of the learned ranker over the signals (0 = linear only).", ge=0)
    ranker_learning_rate: float = setting(0.05, "MUSICREC_RANKER_LEARNING_RATE", "AdaGrad step of the learned ranker.", gt=0)
    ranker_lessons: int = setting(256, "MUSICREC_RANKER_LESSONS", "Plays per micro-batch the ranker learns from (an even sample when there are more; 0 = it never learns).", ge=0)
    seed: int = setting(0, "MUSICREC_SEED", "Random seed for training.")

    def __post_init__(self) -> None:
        check_ranges(self)
        half_lives = self.half_lives  # parses and checks the list
        if not half_lives:
            raise ValueError("MUSICREC_POPULARITY_HALF_LIVES must list at least one half-life")

    @property
    def heard_allowed(self) -> bool:
        """Whether songs a user already played may be recommended to them by the online model."""
        return self.relisten != "never"

    @property
    def half_lives(self) -> tuple[float, ...]:
        """``popularity_half_lives`` as numbers (events; 0 = no decay)."""
        try:
            values = tuple(float(x) for x in self.popularity_half_lives.split(",") if x.strip())
        except ValueError:
            raise ValueError("MUSICREC_POPULARITY_HALF_LIVES must be comma-separated numbers of events, "
                             f"got {self.popularity_half_lives!r}") from None
        if any(v < 0 or v != v for v in values):
            raise ValueError("MUSICREC_POPULARITY_HALF_LIVES must be >= 0")
        return values
