"""Fold-in maths against a known answer: implicit's own least-squares user solve."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from online_models.foldin import confidences, fold_in, fold_in_cg


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


def _histories(seed: int, n_users: int, n_items: int = 50, f: int = 5) -> tuple[np.ndarray, ...]:
    """Item factors and history rows of users with 1..30 songs (uneven lengths: the padding case)."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n_items, f)).astype(np.float32)
    lengths = rng.integers(1, 31, n_users)
    slots = np.repeat(np.arange(n_users), lengths)
    rows = np.concatenate([rng.choice(n_items, size=n, replace=False) for n in lengths])
    conf, pref = confidences(rng.uniform(0, 3, len(rows)), rng.uniform(0, 1, len(rows)), alpha=2.0)
    return y, slots, rows, conf, pref


def test_cg_from_zero_with_enough_steps_reaches_the_exact_solve() -> None:
    y, slots, rows, conf, pref = _histories(3, 12)
    gram = y.T.astype(np.float64) @ y
    exact = fold_in(y, gram, slots, rows, conf, pref, 12, 0.5)
    cg = fold_in_cg(y, gram, slots, rows, conf, pref, 12, 0.5, x0=np.zeros((12, y.shape[1])), steps=y.shape[1])
    np.testing.assert_allclose(cg, exact, rtol=1e-3, atol=1e-4)
    few = fold_in_cg(y, gram, slots, rows, conf, pref, 12, 0.5, x0=np.zeros((12, y.shape[1])), steps=1)
    assert np.abs(few - exact).max() > 1e-3, "one step from zero is not yet the answer (else the test shows nothing)"


def test_cg_answer_of_a_user_does_not_depend_on_who_shares_the_call() -> None:
    y, slots, rows, conf, pref = _histories(4, 20)
    gram = y.T.astype(np.float64) @ y
    x0 = np.random.default_rng(5).normal(size=(20, y.shape[1]))
    together = fold_in_cg(y, gram, slots, rows, conf, pref, 20, 0.5, x0=x0, steps=3)
    for user in (0, 7, 19):
        mine = slots == user
        alone = fold_in_cg(y, gram, np.zeros(mine.sum(), np.int64), rows[mine], conf[mine], pref[mine], 1, 0.5,
                           x0=x0[user:user + 1], steps=3)
        np.testing.assert_allclose(alone[0], together[user], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["slots", "rows", "conf"])
def test_rejects_out_of_range_inputs(bad: str) -> None:
    y = np.ones((3, 2))
    args = {"slots": np.array([0]), "rows": np.array([1]), "conf": np.array([2.0])}
    args[bad] = {"slots": np.array([5]), "rows": np.array([9]), "conf": np.array([0.5])}[bad]
    with pytest.raises(ValueError):
        fold_in(y, y.T @ y, args["slots"], args["rows"], args["conf"], np.ones(1), 1, 0.1)
