"""SASRec on PyTorch, MLX and numpy: same maths, one weight format, causal, and a working Recommender."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from index_manager.keys import song_keys
from offline.loo import loo_split
from offline.loo_sasrec import SASRecScorer
from offline.prequential import make_model
from offline.scorers import make_scorer
from online_models.batch import EventBatch
from online_models.config import OnlineConfig
from online_models.sasrec import SASRecConfig, SASRecEncoder, SASRecModel, build_sequences, load_backend
from online_models.sasrec_spec import init_weights, weights_from_bytes
from online_models.sasrec_train import _windows, epoch_batches, train_sasrec
from online_models.sequence import SASRecRecommender
from tests.clustered import clustered_log

TINY = SASRecConfig(factors=16, max_len=12, heads=2, dropout=0.0, negatives=16, learning_rate=5e-3, epochs=40,
                    patience=40, val_users=0, repeats="keep")


def _random_weights(seed: int, n_items: int = 40, config: SASRecConfig = TINY) -> dict[str, np.ndarray]:
    """Weights far from the initial ones, so a wrong term would show in the states."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.5, v.shape).astype(np.float32)
            for k, v in init_weights(n_items, config, rng).items()}


def _sequences(seed: int, n: int = 7, width: int = 12, n_items: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seqs = rng.integers(1, n_items + 1, (n, width))
    for i, pad in enumerate(rng.integers(0, width, n)):
        seqs[i, :pad] = 0
    return seqs


def _cyclic_log(n_users: int = 40, cycle: int = 8, length: int = 12, seed: int = 0) -> EventBatch:
    """Every user walks s0 -> s1 -> ... -> s{cycle-1} -> s0 from a random start."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, cycle, n_users)
    songs = (starts[:, None] + np.arange(length)) % cycle
    return EventBatch.from_columns(np.repeat([f"u{u}" for u in range(n_users)], length).astype(object),
                                   np.array([f"s{s}" for s in songs.ravel()], dtype=object),
                                   ts=np.tile(np.arange(length, dtype=float), n_users))


@pytest.fixture(scope="module")
def cyclic_models() -> dict[str, SASRecModel]:
    return {b: train_sasrec(_cyclic_log(), replace(TINY, epochs=25), b) for b in ("torch", "mlx")}


# ------------------------------------------------------------------------------------ maths

@pytest.mark.parametrize("seed", [0, 1])
def test_backends_and_numpy_give_the_same_states(seed: int) -> None:
    weights, seqs = _random_weights(seed), _sequences(seed)
    t = load_backend("torch", weights, TINY.heads).hidden(seqs)
    m = load_backend("mlx", weights, TINY.heads).hidden(seqs)
    scale = np.abs(t).max()
    assert t.shape == (7, 12, 16) and t.dtype == np.float32
    np.testing.assert_allclose(m, t, atol=1e-5 * scale)
    enc = SASRecEncoder(weights, TINY.heads)
    np.testing.assert_allclose(enc.encode(seqs), t[:, -1], atol=1e-5 * scale)
    # a narrower window of the same plays is the same state (positions count from the newest play)
    short = seqs[seqs[:, :4].sum(axis=1) == 0][:, 4:]
    if len(short):
        np.testing.assert_allclose(enc.encode(short), t[seqs[:, :4].sum(axis=1) == 0, -1], atol=1e-5 * scale)


def test_later_plays_never_change_earlier_states() -> None:
    weights = _random_weights(2)
    seqs = np.random.default_rng(3).integers(1, 41, (5, 12))  # no padding: every position is a real play
    changed = seqs.copy()
    changed[:, 8:] = (seqs[:, 8:] % 40) + 1
    for backend in ("torch", "mlx"):
        net = load_backend(backend, weights, TINY.heads)
        a, b = net.hidden(seqs), net.hidden(changed)
        np.testing.assert_array_equal(a[:, :8], b[:, :8])
        assert np.abs(a[:, 8:] - b[:, 8:]).max() > 1e-3


@pytest.mark.parametrize("loss", ["sampled", "bce", "full"])
def test_one_epoch_updates_the_same_way_on_both_backends(loss: str) -> None:
    """Same start, same batches and negatives, no dropout: AdamW, clipping and the loss match."""
    cfg = replace(TINY, loss=loss, batch_size=8, clip_norm=0.5, weight_decay=0.01, skip_negatives=3)
    log = clustered_log(n_users=24, skip_rate=0.2)
    seqs = build_sequences(log, cfg.repeats)
    batches = epoch_batches(np.random.default_rng(0), _windows(seqs, cfg.max_len), seqs, cfg)
    if loss == "sampled":
        assert max(int((b.extra_negatives > 0).sum()) for b in batches) > 0, "skips are used as negatives"
    start = init_weights(len(seqs.items), cfg, np.random.default_rng(1))
    nets = {b: load_backend(b, start, cfg.heads, cfg) for b in ("torch", "mlx")}
    losses = {b: net.train_epoch(batches, 0.01, lambda n: None) for b, net in nets.items()}
    assert losses["torch"] == pytest.approx(losses["mlx"], rel=1e-4)
    after_t, after_m = nets["torch"].weights(), nets["mlx"].weights()
    assert max(np.abs(after_t[k] - start[k]).max() for k in start) > 1e-3
    key_bias = slice(cfg.factors, 2 * cfg.factors)
    for name in start:
        a, b = after_m[name], after_t[name]
        if name.endswith("attn.qkv.bias"):
            # the key bias adds q·b to every key alike, which softmax ignores: its gradient is rounding
            # noise, and Adam turns noise into lr-sized steps of either sign
            a, b = np.delete(a, key_bias), np.delete(b, key_bias)
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_learns_a_cycle(cyclic_models: dict[str, SASRecModel], backend: str) -> None:
    model = cyclic_models[backend]
    enc = model.encoder()
    row = {s: i + 1 for i, s in enumerate(model.item_names)}
    for a in range(8):
        seq = np.array([[row[f"s{a}"], row[f"s{(a + 1) % 8}"]]])
        best = model.item_names[np.argmax(enc.encode(seq) @ enc.item_embeddings.T)]
        assert best == f"s{(a + 2) % 8}"


# ------------------------------------------------------------------------------- weights

@pytest.mark.parametrize("trained_with, served_with", [("torch", "mlx"), ("mlx", "torch")])
def test_a_model_saved_by_one_backend_loads_in_the_other(cyclic_models: dict[str, SASRecModel],
                                                         trained_with: str, served_with: str) -> None:
    model = cyclic_models[trained_with]
    data = model.to_bytes()
    assert not data.startswith(b"\x80"), "safetensors, never pickle"
    loaded = SASRecModel.from_bytes(data)
    assert loaded.config == model.config and list(loaded.item_names) == list(model.item_names)
    seqs = _sequences(4, n_items=8, width=TINY.max_len)
    native = load_backend(trained_with, model.weights, model.config.heads).hidden(seqs)
    other = load_backend(served_with, loaded.weights, loaded.config.heads).hidden(seqs)
    np.testing.assert_allclose(other, native, atol=1e-5 * np.abs(native).max())


def test_safetensors_round_trip_is_exact() -> None:
    weights = _random_weights(5)
    model = SASRecModel(np.array([f"s{i}" for i in range(40)], dtype=object), weights, TINY, {"best_epoch": 3})
    data = model.to_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["item_emb.weight"] == {**header["item_emb.weight"], "dtype": "F32", "shape": [41, 16]}
    back = SASRecModel.from_bytes(data)
    assert back.metrics == {"best_epoch": 3}
    for name, arr in weights.items():
        assert back.weights[name].dtype == np.float32
        np.testing.assert_array_equal(back.weights[name], arr)
    assert data == back.to_bytes(), "identical models give identical bytes"
    with pytest.raises(ValueError):
        SASRecModel.from_bytes(b"\x80\x04not safetensors")
    from safetensors.numpy import save

    with pytest.raises(ValueError):  # a valid safetensors file of something else
        weights_from_bytes(save({"x": np.zeros(3, np.float32)}))


def test_training_is_deterministic_given_the_seed() -> None:
    log = clustered_log(n_users=20, plays_per_user=12)
    cfg = replace(TINY, epochs=2, dropout=0.3, val_users=5)
    for backend in ("torch", "mlx"):
        a, b = train_sasrec(log, cfg, backend), train_sasrec(log, cfg, backend)
        assert a.to_bytes() == b.to_bytes(), backend
    c = train_sasrec(log, replace(cfg, seed=1))
    assert c.to_bytes() != a.to_bytes()


# ----------------------------------------------------------------------------- sequences

def test_sequences_follow_time_then_file_order_and_leave_skips_out() -> None:
    ev = EventBatch.from_columns(np.array(["a", "a", "a", "a", "a", "b"], dtype=object),
                                 np.array(["x", "y", "y", "z", "w", "x"], dtype=object),
                                 np.array(["play", "play", "play", "skip", "play", "play"], dtype=object),
                                 ts=np.array([5.0, 1.0, 1.0, 2.0, 1.0, 0.0]))
    for repeats, expected in (("keep", ["y", "y", "w", "x"]), ("collapse", ["y", "w", "x"]),
                              ("first", ["y", "w", "x"])):
        seqs = build_sequences(ev, repeats)
        assert list(seqs.items) == ["w", "x", "y"], "z was only skipped: not in the vocabulary"
        assert list(seqs.items[seqs.of(0) - 1]) == expected
    seqs = build_sequences(ev, "keep", items=np.array(["w", "x", "y", "z"], dtype=object))
    assert list(seqs.items[seqs.skip_flat[seqs.skip_offsets[0]:seqs.skip_offsets[1]] - 1]) == ["z"]


def test_windows_hold_every_transition_once() -> None:
    seqs = build_sequences(clustered_log(n_users=12), "keep")
    win = _windows(seqs, 7)
    pairs = sorted(zip(win.inputs[win.targets > 0].tolist(), win.targets[win.targets > 0].tolist(), strict=True))
    expected = sorted((int(s[j]), int(s[j + 1])) for u in range(len(seqs.users)) for s in [seqs.of(u)]
                      for j in range(len(s) - 1))
    assert pairs == expected
    assert (win.inputs[:, -1] > 0).all(), "windows end at a real play"


# ---------------------------------------------------------------------------- recommender

def test_partial_fit_moves_the_sequence_without_training(cyclic_models: dict[str, SASRecModel]) -> None:
    rec = SASRecRecommender()
    log = _cyclic_log()
    rec.load(cyclic_models["torch"], log)
    before = {k: v.copy() for k, v in cyclic_models["torch"].weights.items()}
    new = EventBatch.from_columns(np.array(["fresh", "fresh", "u0"], dtype=object),
                                  np.array(["s3", "s4", "unknown-song"], dtype=object), ts=np.full(3, 99.0))
    cold = rec.recommend(np.array(["fresh"], dtype=object), 3)
    assert (cold.song_ids[0] != "").all(), "a user without a sequence gets the popular songs"
    touched = rec.partial_fit(new)
    assert sorted(touched) == ["fresh", "u0"]
    assert rec.state.recent.gather(np.array(["fresh"], dtype=object), 2).tolist() == [song_keys(["s3", "s4"]).tolist()]
    recs = rec.recommend(np.array(["fresh"], dtype=object), 3)
    assert recs.song_ids[0, 0] == "s5" and not {"s3", "s4"} & set(recs.song_ids[0])
    assert rec.model is not None and rec.model.sequence is not None
    for name, arr in rec.model.sequence.encoder.w.items():
        np.testing.assert_array_equal(arr, before[name])


def test_rejects_bad_inputs(cyclic_models: dict[str, SASRecModel]) -> None:
    enc = cyclic_models["torch"].encoder()
    for bad in (np.array([1, 2]), np.zeros((2, 0), np.int64), np.array([[1.5, 2.0]]), np.array([[1, 99]]),
                np.array([[-1, 2]]), np.array([[1, 0]]), np.ones((1, TINY.max_len + 1), np.int64)):
        with pytest.raises(ValueError):
            enc.encode(bad)
    assert enc.encode(np.zeros((0, 3), np.int64)).shape == (0, 16)
    with pytest.raises(ValueError):
        load_backend("jax", cyclic_models["torch"].weights, 2)
    with pytest.raises(ValueError):
        train_sasrec(_cyclic_log(), TINY, backend="jax")
    with pytest.raises(ValueError):
        train_sasrec("not events")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SASRecRecommender().recommend(np.array(["u0"], dtype=object))  # not fitted
    with pytest.raises(ValueError):
        SASRecRecommender().partial_fit("not events")  # type: ignore[arg-type]
    for field in ({"factors": 10, "heads": 3}, {"loss": "hinge"}, {"repeats": "all"}, {"dropout": 1.0},
                  {"max_len": 0}, {"learning_rate": 0.0}, {"skip_negatives": -1}):
        with pytest.raises(ValueError):
            SASRecConfig(**field)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ registration

def test_registered_in_both_protocols() -> None:
    assert isinstance(make_model("sequence", OnlineConfig(), 100), SASRecRecommender)
    assert make_scorer("sasrec").name == "sasrec" and make_scorer("sasrec-mlx").name == "sasrec-mlx"


def test_leave_last_out_scorer_finds_the_clusters() -> None:
    train, users, songs = loo_split(clustered_log())
    scorer = SASRecScorer("torch", replace(TINY, epochs=12, batch_size=32, negatives=64, repeats="collapse"))
    scorer.fit(train)
    top = scorer.top(users, 10)
    cluster_of = np.array([int(u[1:]) % 6 for u in users])
    same = [int(s[1:]) % 6 == c for row, c in zip(top, cluster_of, strict=True) for s in row if s]
    assert np.mean(same) > 0.5  # chance: 1/6
    for i in range(0, len(users), 7):  # a user's answer does not depend on who shares the batch
        assert scorer.top(users[i:i + 1], 10)[0].tolist() == top[i].tolist()
    scores = scorer.score(users, np.stack([songs, songs], axis=1))
    # -inf only for held-out songs nobody else played: the model has no embedding for them
    assert scores.shape == (len(users), 2) and np.isfinite(scores).mean() > 0.9
