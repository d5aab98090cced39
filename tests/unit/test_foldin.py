"""Fold-in maths against a known answer: implicit's own least-squares user solve."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from online_models.foldin import confidences, fold_in


def test_matches_implicit_recalculate_user() -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(1)
    n_items, f, n_users = 40, 6, 7
    y = rng.normal(size=(n_items, f)).astype(np.float32)
    # users with 0..12 songs; some rows negative (skips: preference 0)
    rows, slots, pos, neg = [], [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=2 * u, replace=False)
        rows += list(items)
        slots += [u] * len(items)
        pos += list(rng.uniform(0, 3, len(items)))
        neg += list(rng.uniform(0, 1, len(items)) * (rng.random(len(items)) < 0.3))
    conf, pref = confidences(np.array(pos), np.array(neg), alpha=4.0)
    ours = fold_in(y, y.T.astype(np.float64) @ y, np.array(slots), np.array(rows), conf, pref, n_users, 0.1)

    model = AlternatingLeastSquares(factors=f, regularization=0.1, alpha=1.0, random_state=0)
    model.item_factors = y
    signed = np.where(pref > 0, conf, -conf)
    mat = sp.csr_matrix((signed, (slots, rows)), shape=(n_users, n_items), dtype=np.float32)
    theirs = model.recalculate_user(np.arange(n_users), mat)
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-4)
    assert np.all(ours[0] == 0), "a user without history gets the zero vector"


def test_grouping_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import online_models.foldin as fi

    rng = np.random.default_rng(2)
    y = rng.normal(size=(30, 4))
    slots = rng.integers(0, 9, 200)
    rows = rng.integers(0, 30, 200)
    conf = 1 + rng.uniform(0, 5, 200)
    pref = (rng.random(200) < 0.8).astype(float)
    one = fold_in(y, y.T @ y, slots, rows, conf, pref, 9, 0.5)
    monkeypatch.setattr(fi, "_GROUP_ROWS", 3)  # forces many tiny groups
    many = fold_in(y, y.T @ y, slots, rows, conf, pref, 9, 0.5)
    np.testing.assert_allclose(one, many, rtol=1e-5)


@pytest.mark.parametrize("bad", ["slots", "rows", "conf"])
def test_rejects_out_of_range_inputs(bad: str) -> None:
    y = np.ones((3, 2))
    args = {"slots": np.array([0]), "rows": np.array([1]), "conf": np.array([2.0])}
    args[bad] = {"slots": np.array([5]), "rows": np.array([9]), "conf": np.array([0.5])}[bad]
    with pytest.raises(ValueError):
        fold_in(y, y.T @ y, args["slots"], args["rows"], args["conf"], np.ones(1), 1, 0.1)
