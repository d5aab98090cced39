"""The paired bootstrap interval of a ratio of two models' hits."""

from __future__ import annotations

import numpy as np
import pytest

from offline.intervals import ratio_interval


def test_the_ratio_interval_resamples_stretches_of_plays_in_pairs() -> None:
    rng = np.random.default_rng(1)
    reference = rng.random(4000) < 0.05
    # a model that hits wherever the reference does, and on 10 more plays: paired, no resample can
    # put it below the reference, and the interval is tight (drawn apart, it would span ~0.8-1.3x)
    more = reference.copy()
    more[rng.choice(np.flatnonzero(~reference), 10, replace=False)] = True
    low, high = ratio_interval(more, reference, blocks=50)
    assert 1.0 <= low < more.sum() / reference.sum() < high < low + 0.1
    assert ratio_interval(reference, reference, blocks=50) == (1.0, 1.0)
    # independent models: the interval spans their ratio, widens with fewer plays, repeats with its seed
    other = rng.random(4000) < 0.06
    ratio = other.sum() / reference.sum()
    wide, narrow = ratio_interval(other[:800], reference[:800], blocks=20), ratio_interval(other, reference, 50)
    assert narrow[0] < ratio < narrow[1] and wide[1] - wide[0] > narrow[1] - narrow[0]
    assert ratio_interval(other, reference, 50) == narrow
    assert ratio_interval(other, np.zeros(4000, bool), 50) is None  # the reference never hits
    with pytest.raises(ValueError):
        ratio_interval(other, reference[:10], 5)
    with pytest.raises(ValueError):
        ratio_interval(other, reference, 1)
