"""NeuMF on PyTorch and MLX: same maths, one weight format, comparable quality, skip-aware sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index_manager.artifacts import load_artifact, save_artifact
from index_manager.song_index import from_parts
from offline.loo import evaluate_loo, loo_split
from online_models.config import OnlineConfig
from online_models.interactions import Interactions
from online_models.ncf import NCFScorer, load_backend
from online_models.ncf_config import NCFConfig
from online_models.ncf_train import epoch_samples, train_ncf
from online_models.ncf_weights import WEIGHTS_FILE, init_weights, weights_from_bytes, weights_to_bytes
from tests.clustered import clustered_log

# small enough to train in seconds, long enough to get past the popularity plateau of a tiny log
SMALL = NCFConfig(epochs=20, patience=20, val_users=60)


@pytest.fixture(scope="module")
def interactions() -> Interactions:
    train, _, _ = loo_split(clustered_log())
    return Interactions.from_events(train, OnlineConfig())


@pytest.fixture(scope="module")
def trained(interactions: Interactions):  # type: ignore[no-untyped-def]
    return {b: train_ncf(interactions, NCFConfig(epochs=3, val_users=40), backend=b) for b in ("torch", "mlx")}


def _random_weights(scale: float, seed: int) -> dict[str, np.ndarray]:
    """Weights far from the tiny initial ones, so a wrong term would show in the logits."""
    rng = np.random.default_rng(seed)
    base = init_weights(30, 50, NCFConfig(mlp_layers="16,8,4", factors=8), rng)
    return {k: rng.normal(0, scale, v.shape).astype(np.float32) for k, v in base.items()}


@pytest.mark.parametrize("weights", [
    init_weights(30, 50, NCFConfig(), np.random.default_rng(0)),
    _random_weights(0.5, 1),
], ids=["initial", "random"])
def test_backends_give_the_same_scores(weights: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 30, 500), rng.integers(0, 50, 500)
    torch_net, mlx_net = load_backend("torch", weights), load_backend("mlx", weights)
    t, m = torch_net.score_pairs(users, items), mlx_net.score_pairs(users, items)
    scale = np.abs(t).max()
    np.testing.assert_allclose(m, t, rtol=1e-4, atol=1e-5 * scale)
    # the full-catalog path (GMF as one matmul, first MLP layer split) is the same function
    all_t, all_m = torch_net.score_all(np.arange(30)), mlx_net.score_all(np.arange(30))
    np.testing.assert_allclose(all_t[users, items], t, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(all_m, all_t, rtol=1e-4, atol=1e-5 * scale)


def test_one_epoch_updates_the_same_way_on_both_backends() -> None:
    """Same start, same samples: AdamW (bias-corrected), clipping and BCE must match step by step."""
    cfg = NCFConfig(mlp_layers="16,8", factors=8, batch_size=32, clip_norm=0.05, weight_decay=0.01)
    start = init_weights(20, 40, cfg, np.random.default_rng(3))
    rng = np.random.default_rng(4)
    users, items = rng.integers(0, 20, 320), rng.integers(0, 40, 320)
    labels = (rng.random(320) < 0.3).astype(np.float32)
    nets = {b: load_backend(b, start, cfg) for b in ("torch", "mlx")}
    losses = {b: net.train_epoch(users, items, labels, 0.01, lambda n: None) for b, net in nets.items()}
    assert losses["torch"] == pytest.approx(losses["mlx"], rel=1e-4)
    after_t, after_m = nets["torch"].weights(), nets["mlx"].weights()
    moved = max(np.abs(after_t[k] - start[k]).max() for k in start)
    assert moved > 1e-3, "training must change the weights for this comparison to mean anything"
    for name in start:
        np.testing.assert_allclose(after_m[name], after_t[name], atol=2e-5, err_msg=name)


def test_safetensors_round_trip_is_exact() -> None:
    weights = _random_weights(1.0, 5)
    data = weights_to_bytes(weights, {"note": "x"})
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    assert json.loads(header["__metadata__"]["musicrec"]) == {"format": "musicrec-neumf-1", "note": "x"}
    assert header["out.weight"]["dtype"] == "F32" and header["out.weight"]["shape"] == [1, 12]
    back = weights_from_bytes(data)
    assert set(back) == set(weights)
    for name, arr in weights.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], arr)
    with pytest.raises(ValueError):
        weights_from_bytes(b"\x80\x04not safetensors")
    broken = dict(weights)
    del broken["out.bias"]
    with pytest.raises(ValueError):
        weights_to_bytes(broken)


@pytest.mark.parametrize("trained_with, served_with", [("torch", "mlx"), ("mlx", "torch")])
def test_weights_trained_on_one_backend_serve_on_the_other(trained, tmp_path, trained_with: str,  # type: ignore[no-untyped-def]
                                                           served_with: str) -> None:
    artifact = trained[trained_with]
    loaded = load_artifact(tmp_path, save_artifact(tmp_path, artifact))
    assert loaded.files[WEIGHTS_FILE] == artifact.files[WEIGHTS_FILE]
    native = NCFScorer.from_artifact(artifact, trained_with)
    other = NCFScorer.from_artifact(loaded, served_with)
    rng = np.random.default_rng(6)
    users = rng.integers(0, len(native.user_names), 40)
    songs = rng.integers(0, len(native.song_names), (40, 25))
    a, b = native.score(users, songs), other.score(users, songs)
    assert a.shape == (40, 25) and np.std(a) > 0
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    np.testing.assert_allclose(other.score_all(users)[np.arange(40)[:, None], songs], a, rtol=1e-4,
                               atol=1e-5 * np.abs(a).max())


def test_artifact_retrieval_space_is_the_gmf_branch(trained) -> None:  # type: ignore[no-untyped-def]
    """user_factors · item_factors is exactly NeuMF's logit once the MLP half and bias are zeroed."""
    artifact = trained["torch"]
    assert artifact.kind == "ncf" and artifact.item_factors.dtype == np.float32
    weights = weights_from_bytes(artifact.files[WEIGHTS_FILE])
    np.testing.assert_array_equal(artifact.item_factors, weights["gmf_item.weight"])
    f = artifact.factors
    weights["out.weight"][0, f:] = 0.0
    weights["out.bias"][:] = 0.0
    gmf_only = NCFScorer(artifact.user_names, artifact.song_names, weights)
    users = np.arange(10)
    dot = artifact.user_factors[users] @ artifact.item_factors.T
    np.testing.assert_allclose(gmf_only.score_all(users), dot, rtol=1e-4, atol=1e-6 * np.abs(dot).max())
    index = from_parts(artifact.song_names, artifact.item_factors, artifact.index_bytes)
    keys, _ = index.search(artifact.user_factors[users], 1)
    np.testing.assert_array_equal(index.names_of(keys[:, 0]), artifact.song_names[dot.argmax(axis=1)])
    played = artifact.popularity.sum()
    assert played == artifact.trained_on["n_positives"]


def test_training_is_deterministic_given_the_seed(interactions: Interactions) -> None:
    cfg = NCFConfig(epochs=2, val_users=30)
    a, b = train_ncf(interactions, cfg), train_ncf(interactions, cfg)
    assert a.files[WEIGHTS_FILE] == b.files[WEIGHTS_FILE]
    c = train_ncf(interactions, NCFConfig(epochs=2, val_users=30, seed=1))
    assert c.files[WEIGHTS_FILE] != a.files[WEIGHTS_FILE]


def test_both_backends_beat_popularity_by_far_and_agree() -> None:
    """Through the leave-last-out code: the clusters are invisible to popularity, not to NeuMF."""
    # 240 users: at 120 (batch 256), one seed in three let float32 rounding differences between the
    # backends grow into a 6-point HR gap; at 240 the gap was <= 0.004 for seeds 0, 1 and 2
    result = evaluate_loo(clustered_log(n_users=240), ["ncf", "ncf-mlx", "popularity"], ncf_config=SMALL)
    hr = {m: v["hr@10"] for m, v in result["models"].items()}
    assert hr["popularity"] < 0.25
    assert hr["ncf"] > hr["popularity"] + 0.3
    assert hr["ncf-mlx"] > hr["popularity"] + 0.3
    assert abs(hr["ncf"] - hr["ncf-mlx"]) <= 0.05


def test_skips_are_the_preferred_negatives() -> None:
    pos_u, pos_i = np.array([0, 0, 1]), np.array([0, 1, 5])
    # user 0 skipped 3 songs (under its cap of 0.5 * 2 positives * 4 = 4 slots), user 1 skipped 10
    skip_u = np.array([0, 0, 0] + [1] * 10)
    skip_i = np.array([2, 3, 4, *range(6, 16)])
    rng = np.random.default_rng(0)
    # a catalog so large that a uniform draw landing on a skipped song is a ~1e-4 event
    n_items = 100_000
    for _ in range(20):
        users, items, labels = epoch_samples(rng, pos_u, pos_i, skip_u, skip_i, n_users=2, n_items=n_items,
                                             negatives=4, skip_share=0.5)
        assert len(users) == 3 + 3 * 4
        pos = labels == 1
        assert sorted(zip(users[pos].tolist(), items[pos].tolist(), strict=True)) == [(0, 0), (0, 1), (1, 5)]
        neg0 = items[(users == 0) & ~pos]
        neg1 = items[(users == 1) & ~pos]
        assert len(neg0) == 8 and len(neg1) == 4
        assert not np.isin(neg0, [0, 1]).any() and 5 not in neg1, "a positive is never a negative"
        # user 0: each of its 3 skips once, then 5 uniform draws
        assert sorted(neg0[np.isin(neg0, [2, 3, 4])].tolist()) == [2, 3, 4]
        # user 1: exactly its cap of 2 of its 10 skipped songs, then 2 uniform draws
        assert np.isin(neg1, skip_i[3:]).sum() == 2
    users, items, labels = epoch_samples(np.random.default_rng(1), pos_u, pos_i, skip_u, skip_i, 2, n_items, 4, 0.0)
    assert not np.isin(items[labels == 0], skip_i).any(), "skip_share 0: skips are just unplayed songs"


def test_training_uses_the_skip_rows(interactions: Interactions) -> None:
    artifact = train_ncf(interactions, NCFConfig(epochs=1, val_users=0))
    expected = int(((interactions.neg > interactions.pos)).sum())
    assert expected > 0
    assert artifact.trained_on["n_skip_negatives"] == expected
    assert artifact.metrics["val_hr@10"] is None and artifact.metrics["epochs_run"] == 1


def test_rejects_bad_inputs(trained, interactions: Interactions) -> None:  # type: ignore[no-untyped-def]
    scorer = NCFScorer.from_artifact(trained["torch"])
    with pytest.raises(ValueError):
        scorer.score(np.array([0, 1]), np.zeros((3, 4), np.int64))  # rows differ
    with pytest.raises(ValueError):
        scorer.score(np.array([0.5]), np.zeros((1, 4), np.int64))  # not integers
    with pytest.raises(ValueError):
        scorer.score(np.array([0]), np.full((1, 4), len(scorer.song_names)))  # out of range
    with pytest.raises(ValueError):
        scorer.score_all(np.array([[0]]))
    assert scorer.user_rows(np.array(["nobody", scorer.user_names[3]], dtype=object)).tolist() == [-1, 3]
    with pytest.raises(ValueError):
        train_ncf(interactions, SMALL, backend="jax")
    with pytest.raises(ValueError):
        NCFScorer.from_artifact(trained["torch"], backend="jax")
    for bad in ({"mlp_layers": "63,32"}, {"mlp_layers": "64,x"}, {"learning_rate": 0.0}, {"skip_share": 1.5},
                {"epochs": 0}):
        with pytest.raises(ValueError):
            NCFConfig(**bad)  # type: ignore[arg-type]
