"""A/B split and per-arm hits (pure functions), then a worker serving two versions at once."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.abtest import ArmMetrics, combine, in_treatment
from online_models.batch import EventBatch


def test_the_split_is_stable_batch_independent_and_close_to_the_share() -> None:
    users = np.array([f"user-{i}" for i in range(20_000)], dtype=object)
    treated = in_treatment(users, "salt-1", 0.3)
    assert abs(treated.mean() - 0.3) < 0.015
    # a user's arm does not depend on who shares the call, nor on the call
    singles = np.array([in_treatment(users[i:i + 1], "salt-1", 0.3)[0] for i in range(0, 20_000, 97)])
    np.testing.assert_array_equal(singles, treated[::97])
    np.testing.assert_array_equal(in_treatment(users, "salt-1", 0.3), treated)
    # a new test (salt) draws a new split; the shares nest for one salt
    assert (in_treatment(users, "salt-2", 0.3) != treated).mean() > 0.3
    assert not (in_treatment(users, "salt-1", 0.1) & ~treated).any()
    assert not in_treatment(users, "s", 0.0).any() and in_treatment(users, "s", 1.0).all()
    with pytest.raises(ValueError, match="share"):
        in_treatment(users, "s", 1.5)
    with pytest.raises(ValueError, match="one-dimensional"):
        in_treatment(users.reshape(2, -1), "s", 0.5)


def _events(rows: list[tuple[str, str, str]]) -> EventBatch:
    users, songs, kinds = zip(*rows, strict=True)
    return EventBatch.from_columns(np.array(users, dtype=object), np.array(songs, dtype=object),
                                   np.array(kinds, dtype=object), np.arange(len(rows), dtype=np.float64))


def test_hits_count_plays_of_listed_songs_within_the_horizon() -> None:
    m = ArmMetrics(horizon=2)
    m.observe(_events([("a", "s1", "play")]))  # nothing served yet: not counted
    m.record(np.array(["a", "b"], dtype=object), "control", np.array([["s1", "s2"], ["s3", ""]], dtype=object))
    m.record(np.array(["c"], dtype=object), "treatment", np.array([["s9", "s8"]], dtype=object))
    m.observe(_events([("a", "s2", "play"), ("a", "s5", "play"), ("a", "s1", "play"),  # 3rd is past the horizon
                       ("b", "s3", "skip"), ("b", "", "play"),  # a skip is no play; "" pads, never a hit
                       ("c", "s8", "play"), ("x", "s1", "play")]))
    s = m.summary()
    assert s["control"] == {"served": 2, "plays": 3, "hits": 1, "hit_rate": pytest.approx(1 / 3)}
    assert s["treatment"] == {"served": 1, "plays": 1, "hits": 1, "hit_rate": 1.0}
    # a new list restarts the horizon
    m.record(np.array(["a"], dtype=object), "control", np.array([["s7", ""]], dtype=object))
    m.observe(_events([("a", "s7", "play")]))
    assert m.summary()["control"]["hits"] == 2
    both = combine([m.summary(), m.summary(), {}])
    assert both["control"]["plays"] == 8 and both["control"]["hit_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="arm"):
        m.record(np.array(["a"], dtype=object), "other", np.array([["s1"]], dtype=object))
