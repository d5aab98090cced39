"""The product's online recommender: learning from events, cold start, filtering, explanations
(the contract every recommender meets is tests/unit/test_contract.py)."""

from __future__ import annotations

import numpy as np

from index_manager.holder import ModelHolder, Served
from index_manager.keys import song_keys
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig
from online_models.explain import PLAYED_BEFORE
from online_models.features import feature_names
from online_models.online import OnlineALS
from online_models.scoring import POPULARITY_VERSION
from online_models.serving import ServingModel
from tests.synthetic import synthetic_log


def test_without_a_model_serves_popularity_minus_seen() -> None:
    model = OnlineALS(OnlineConfig(factors=4, relisten="never"))
    ev = EventBatch.from_columns(np.array(["a", "a", "b", "c", "c", "c"], dtype=object),
                                 np.array(["x", "y", "x", "x", "y", "z"], dtype=object),
                                 ts=np.arange(6.0))
    model.partial_fit(ev)
    recs = model.recommend(np.array(["new", "a"], dtype=object), k=3)
    assert recs.version == POPULARITY_VERSION
    assert list(recs.song_ids[0]) == ["x", "y", "z"]  # 3 plays, 2, 1
    assert list(recs.song_ids[1]) == ["z", "", ""]  # a has heard x and y


def test_a_play_moves_the_user_towards_its_cluster() -> None:
    log = synthetic_log()
    model = OnlineALS(OnlineConfig(factors=8, iterations=10, relisten="never"))
    model.fit(log)
    # a brand-new user plays twelve odd songs: their list should become odd songs
    odd = [f"s{i}" for i in range(1, 24, 2)]
    ev = EventBatch.from_columns(np.array(["fresh"] * len(odd), dtype=object), np.array(odd, dtype=object),
                                 ts=np.full(len(odd), log.ts.max() + 1))
    before = model.recommend(np.array(["fresh"], dtype=object), k=10)
    model.partial_fit(ev)
    after = model.recommend(np.array(["fresh"], dtype=object), k=10)
    odd_after = np.mean([int(s[1:]) % 2 == 1 for s in after.song_ids[0] if s])
    assert odd_after >= 0.9
    assert list(before.song_ids[0]) != list(after.song_ids[0])
    assert not set(odd) & set(after.song_ids[0]), "played songs are filtered"


def test_a_newcomer_gets_popular_songs_and_one_play_turns_the_list() -> None:
    log = synthetic_log()
    model = OnlineALS(OnlineConfig(factors=8, iterations=10))
    model.fit(log)
    user = np.array(["newcomer"], dtype=object)
    ladder = model.state.popularity
    popular = {model.state.names[int(x)] for r in range(len(ladder.half_lives)) for x in ladder.top(10, r)}
    first = model.serve(user, k=10).recs.song_ids[0]
    assert set(first) <= popular, "no history: nothing but popular songs"
    odd_share = []
    t = log.ts.max()
    for i, song in enumerate([f"s{j}" for j in range(1, 40, 2)]):
        model.partial_fit(EventBatch.from_columns(user, np.array([song], dtype=object), ts=np.array([t + i])))
        if i in (0, 19):
            recs = model.recommend(user, k=10).song_ids[0]
            odd_share.append(np.mean([int(s[1:]) % 2 == 1 for s in recs if s]))
    # the first play already brings its co-played songs (all odd, the user's cluster)
    assert odd_share[0] >= 0.9 and odd_share[1] >= 0.9


def test_the_ranker_learns_to_trust_collaborative_signals_for_warm_users() -> None:
    log = synthetic_log()
    model = OnlineALS(OnlineConfig(factors=8, iterations=10))
    model.fit(log)
    ranker = model.state.ranker
    names = feature_names(model.config)
    assert ranker.lessons > 300  # plays whose song was among the candidates
    warm = ranker.linear[ranker.bucket(np.array([20]))[0]]
    # it starts from popularity alone; on a log made of two taste clusters, the stream teaches it
    # that the user's co-played songs and folded-in vector matter
    assert warm[names.index("cooc")] > 0.02 and warm[names.index("cf")] > 0.02


def _habit_log(replays: bool, n_users: int = 40, n_events: int = 4000, seed: int = 0) -> EventBatch:
    """Users of two taste clusters who either go back to their own five songs (``replays``) or
    never play a song twice."""
    rng = np.random.default_rng(seed)
    users = np.arange(n_events) % n_users
    if replays:
        songs = 2 * (5 * users + rng.integers(0, 5, n_events)) + users % 2  # each user's own five
    else:
        turn = np.arange(n_events) // n_users  # the user's n-th play: a song new to them
        songs = 2 * ((turn * 7 + users * 3) % 500) + users % 2
    return EventBatch.from_columns(np.array([f"u{u}" for u in users], dtype=object),
                                   np.array([f"s{s}" for s in songs], dtype=object),
                                   ts=1.6e9 + np.arange(n_events, dtype=np.float64))


def test_the_ranker_learns_whether_users_go_back_to_their_songs() -> None:
    heard_share, heard_weight = {}, {}
    for replays in (True, False):
        log = _habit_log(replays)
        model = OnlineALS(OnlineConfig(factors=8, iterations=8))  # relisten = learn
        model.fit(log)
        users = np.unique(log.user_ids)
        recs = model.recommend(users, k=5)
        heard_share[replays] = np.mean([s in set(log.song_ids[log.user_ids == u])
                                        for u, row in zip(users, recs.song_ids, strict=True) for s in row if s])
        ranker = model.state.ranker
        buckets = ranker.bucket(model.state.history.sizes(users))
        heard_weight[replays] = ranker.linear[buckets, feature_names(model.config).index("heard")].mean()
    assert heard_weight[True] > 0 > heard_weight[False]
    assert heard_share[True] >= 0.8 and heard_share[False] == 0.0


def test_never_filters_heard_songs_before_and_after_learning() -> None:
    log = _habit_log(replays=True)
    model = OnlineALS(OnlineConfig(factors=8, iterations=8, relisten="never"))
    model.fit(log.take(slice(0, 3000)))
    tail = log.take(slice(3000, None))
    model.partial_fit(tail)
    users = np.unique(log.user_ids)
    recs = model.recommend(users, k=20)
    for user, row in zip(users, recs.song_ids, strict=True):
        assert not set(log.song_ids[log.user_ids == user]) & set(row), user


def test_relisten_policy_keeps_played_songs() -> None:
    log = synthetic_log()
    model = OnlineALS(OnlineConfig(factors=8, iterations=10, relisten="always"))
    model.fit(log)
    user = log.user_ids[0]
    played = set(log.song_ids[log.user_ids == user])
    recs = model.recommend(np.array([user], dtype=object), k=20)
    assert played & set(recs.song_ids[0])


def test_skips_push_a_song_down() -> None:
    log = synthetic_log()
    model = OnlineALS(OnlineConfig(factors=8, iterations=10, relisten="always"))
    model.fit(log)
    user = np.array(["u1"], dtype=object)
    first = model.recommend(user, k=5)
    top = first.song_ids[0][0]
    skips = EventBatch.from_columns(np.array(["u1"] * 5, dtype=object), np.array([top] * 5, dtype=object),
                                    np.array(["skip"] * 5, dtype=object), np.full(5, log.ts.max() + 10))
    model.partial_fit(skips)
    second = model.recommend(user, k=5)
    assert top not in set(second.song_ids[0][:1])
    s_before = first.scores[0][0]
    s_after = dict(zip(model.recommend(user, k=200).song_ids[0], model.recommend(user, k=200).scores[0],
                       strict=True)).get(top, -np.inf)
    assert s_after < s_before


def test_explanations_name_a_similar_song_the_user_played() -> None:
    log = synthetic_log()
    model = OnlineALS(OnlineConfig(factors=8, iterations=10, relisten="never"))
    model.fit(log)
    users = np.array(["u1", "u2", "nobody"], dtype=object)
    recs = model.serve(users, k=5).recs
    played = {u: set(log.song_ids[log.user_ids == u]) for u in ("u1", "u2")}
    for i, user in enumerate(users[:2]):
        for reason in recs.reasons[i]:
            assert reason.startswith("because you played ")
            source = reason.removeprefix("because you played ")
            assert source in played[user]
    # known answer for one song: the played song with the highest cosine similarity to it
    index = model.holder.get().model.index
    unit = index.factors / np.linalg.norm(index.factors, axis=1, keepdims=True)
    latest = [s for s in log.song_ids[log.user_ids == "u2"][::-1]]
    recent = list(dict.fromkeys(latest))[:20]
    rec = recs.song_ids[1][0]
    sims = unit[index.rows(song_keys(np.array(recent, dtype=object)))] @ unit[index.rows(song_keys(np.array([rec])))][0]
    assert recs.reasons[1][0] == f"because you played {recent[int(np.argmax(sims))]}"
    assert set(recs.reasons[2]) == {"popular now"}


def test_a_song_the_user_played_is_explained_as_played_before() -> None:
    log = synthetic_log()
    model = OnlineALS(OnlineConfig(factors=8, iterations=10, relisten="always"))
    model.fit(log)
    recs = model.serve(np.array(["u1"], dtype=object), k=20).recs
    played = set(log.song_ids[(log.user_ids == "u1") & (log.kinds == PLAY)])
    again = [s in played for s in recs.song_ids[0]]
    assert any(again) and not all(again)
    for song, reason in zip(recs.song_ids[0], recs.reasons[0], strict=True):
        assert (reason == PLAYED_BEFORE) == (song in played), song


def test_mmr_diversity_lowers_list_similarity_and_keeps_relevance_first() -> None:
    log = synthetic_log()
    users = np.array([f"u{i}" for i in range(20)], dtype=object)

    def similarity(model: OnlineALS) -> float:
        recs = model.recommend(users, k=10)
        index = model.holder.get().model.index
        f = index.factors / np.linalg.norm(index.factors, axis=1, keepdims=True)
        out = []
        for row in recs.song_ids:
            v = f[index.rows(song_keys(row))]
            s = v @ v.T
            out.append((s.sum() - len(v)) / (len(v) * (len(v) - 1)))
        return float(np.mean(out))

    plain = OnlineALS(OnlineConfig(factors=8, iterations=10))
    plain.fit(log)
    diverse = OnlineALS(OnlineConfig(factors=8, iterations=10, diversity=0.7))
    diverse.fit(log)
    assert similarity(diverse) < similarity(plain)
    a, b = plain.recommend(users, k=10), diverse.recommend(users, k=10)
    assert (a.song_ids[:, 0] == b.song_ids[:, 0]).mean() >= 0.8, "the most relevant song is still picked first"


class CountingHolder(ModelHolder[ServingModel]):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def peek(self) -> Served[ServingModel] | None:
        self.reads += 1
        return super().peek()


def test_one_request_reads_the_model_holder_once() -> None:
    log = synthetic_log()
    holder = CountingHolder()
    model = OnlineALS(OnlineConfig(factors=8, iterations=8), holder)
    model.fit(log)
    users = np.array(["u1", "u2", "nobody"], dtype=object)
    for request in (lambda: model.recommend(users, 5), lambda: model.serve(users, 5),
                    lambda: model.similar(np.array(["s1"], dtype=object), 5)):
        holder.reads = 0
        request()
        assert holder.reads == 1
    served = model.serve(users, 5)
    assert served.recs.version == served.popular.version == holder.version
