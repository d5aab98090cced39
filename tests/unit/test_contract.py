"""The ``Recommender`` contract (online_models/base.py), run on every recommender there is.

Every module of ``online_models`` is imported and every concrete subclass of ``Recommender`` found
(as river's estimator checks do), so a new model is checked without anyone listing it here. A model
is built from its ``_unit_test_params()`` and may skip a check by name (``_unit_test_skips()``)
only where the check does not apply to it by design.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import online_models
from online_models.base import MAX_K, RecList, Recommender, SimilarSongs
from online_models.batch import EventBatch
from tests.synthetic import synthetic_log

TRAIN = 2500  # the synthetic log's first events are the fit; the rest is the stream


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def recommenders() -> list[type[Recommender]]:
    for module in pkgutil.iter_modules(online_models.__path__):
        try:
            importlib.import_module(f"online_models.{module.name}")
        except ImportError:  # an optional backend that is not installed holds no recommender
            continue
    found = {c for c in _subclasses(Recommender) if not inspect.isabstract(c)}
    return sorted(found, key=lambda c: c.__name__)


RECOMMENDERS = recommenders()
CHECKS: list[Callable[[Recommender, EventBatch], None]] = []


def check(fn: Callable[[Recommender, EventBatch], None]) -> Callable[[Recommender, EventBatch], None]:
    CHECKS.append(fn)
    return fn


@check
def shapes_and_padding(model: Recommender, log: EventBatch) -> None:
    recs = model.recommend(np.array(["u1", "u2", "nobody"], dtype=object), k=7)
    assert isinstance(recs, RecList)
    assert recs.song_ids.shape == recs.scores.shape == recs.reasons.shape == (3, 7)
    for row in range(3):
        filled = recs.song_ids[row] != ""
        assert filled.sum() > 0, "every user, known or not, gets something"
        assert np.all(np.diff(recs.scores[row][filled]) <= 1e-6), "scores descend"
        assert len(set(recs.song_ids[row][filled])) == filled.sum(), "no duplicates"
        assert (recs.song_ids[row][filled.sum():] == "").all(), "padding only at the end"


@check
def batch_equals_single_user(model: Recommender, log: EventBatch) -> None:
    users = np.concatenate([np.unique(log.user_ids)[:25], ["nobody"]]).astype(object)
    batch = model.recommend(users, k=10)
    for i, user in enumerate(users):
        alone = model.recommend(np.array([user], dtype=object), k=10)
        assert list(alone.song_ids[0]) == list(batch.song_ids[i]), user
        np.testing.assert_allclose(alone.scores[0], batch.scores[i], rtol=1e-4, atol=1e-5)


@check
def answers_do_not_change_without_learning(model: Recommender, log: EventBatch) -> None:
    users = np.unique(log.user_ids)[:10]
    first, again = model.recommend(users, k=10), model.recommend(users, k=10)
    np.testing.assert_array_equal(first.song_ids, again.song_ids)


@check
def pads_when_k_exceeds_the_catalog(model: Recommender, log: EventBatch) -> None:
    recs = model.recommend(np.array(["u1"], dtype=object), k=MAX_K)
    filled = recs.song_ids[0] != ""
    assert 0 < filled.sum() <= len(np.unique(log.song_ids))
    assert np.isneginf(recs.scores[0][~filled]).all()


@check
def filters_what_the_user_heard(model: Recommender, log: EventBatch) -> None:
    users = np.unique(log.user_ids)[:10]
    recs = model.recommend(users, k=20)
    for i, user in enumerate(users):
        heard = set(log.song_ids[:TRAIN][log.user_ids[:TRAIN] == user])
        assert not heard & set(recs.song_ids[i]), user


@check
def partial_fit_returns_touched_users(model: Recommender, log: EventBatch) -> None:
    tail = log.take(slice(TRAIN, None))
    touched = model.partial_fit(tail)
    assert sorted(touched) == sorted(np.unique(tail.user_ids))


@check
def filters_what_the_user_just_heard(model: Recommender, log: EventBatch) -> None:
    tail = log.take(slice(TRAIN, None))
    model.partial_fit(tail)
    recs = model.recommend(np.unique(tail.user_ids), k=20)
    for i, user in enumerate(np.unique(tail.user_ids)):
        assert not set(tail.song_ids[tail.user_ids == user]) & set(recs.song_ids[i]), "learnt what they heard"


@check
def rejects_bad_requests(model: Recommender, log: EventBatch) -> None:
    for users, k in ((["u1"], 0), (["u1"], MAX_K + 1), (["u1"], 2.5), ([["u1"]], 5)):
        with pytest.raises(ValueError):
            model.recommend(np.array(users, dtype=object), k=k)  # type: ignore[arg-type]


@check
def finds_the_users_cluster(model: Recommender, log: EventBatch) -> None:
    users = np.array([f"u{i}" for i in range(20)], dtype=object)
    recs = model.recommend(users, k=10)
    hits = [int(s[1:]) % 2 == i % 2 for i in range(20) for s in recs.song_ids[i] if s]
    assert np.mean(hits) > 0.8


@check
def similar_songs(model: Recommender, log: EventBatch) -> None:
    if not isinstance(model, SimilarSongs):
        pytest.skip(f"{type(model).__name__} has no song vectors")
    songs = np.array(["s0", "s1", "s2", "no-such-song"], dtype=object)
    batch = model.similar(songs, k=5)
    assert batch.song_ids.shape == (4, 5) and (batch.song_ids[3] == "").all(), "an unknown song: an empty row"
    for i, song in enumerate(songs):
        alone = model.similar(np.array([song], dtype=object), k=5)
        assert list(alone.song_ids[0]) == list(batch.song_ids[i]), song
    for i in range(3):
        assert songs[i] not in set(batch.song_ids[i]), "a song is not its own neighbour"
        assert np.mean([int(s[1:]) % 2 == i % 2 for s in batch.song_ids[i] if s]) >= 0.8, "same cluster"
    with pytest.raises(ValueError):
        model.similar(np.array([["s0"]], dtype=object), k=5)


def test_every_recommender_is_found() -> None:
    names = {c.__name__ for c in RECOMMENDERS}
    assert {"OnlineALS", "PopularityRecommender", "StaticALS", "PeriodicRetrain"} <= names, names


@pytest.fixture(scope="module", params=RECOMMENDERS, ids=lambda c: c.__name__)
def fitted(request: pytest.FixtureRequest) -> tuple[type[Recommender], EventBatch]:
    cls: type[Recommender] = request.param
    return cls, synthetic_log()


@pytest.mark.parametrize("check_fn", CHECKS, ids=lambda f: f.__name__)
def test_contract(fitted: tuple[type[Recommender], EventBatch], check_fn: Callable[[Recommender, EventBatch], None]
                  ) -> None:
    cls, log = fitted
    if check_fn.__name__ in cls._unit_test_skips():
        pytest.skip(f"{cls.__name__} declares that {check_fn.__name__} does not apply")
    model = cls(**cls._unit_test_params())
    model.fit(log.take(slice(0, TRAIN)))
    check_fn(model, log)
