"""SASRec as a versioned model: retrain from the ordered log, the artifact round trip, serving from
the online state's recent plays, and the gate scoring it beside fold-in versions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from index_manager.artifacts import ArtifactError, load_artifact, save_artifact
from index_manager.keys import song_keys
from index_manager.registry import MemoryPointer, VersionRegistry
from offline.config import TrainConfig
from offline.eventlog import EventLog
from offline.retrain import RetrainResult, retrain
from online_models.batch import PLAY, EventBatch
from online_models.config import OnlineConfig
from online_models.features import feature_names
from online_models.online import OnlineALS
from online_models.ranking import take_top
from online_models.sasrec import SASRecConfig, SASRecModel, build_sequences, right_aligned
from online_models.sasrec_serving import apply_repeats
from online_models.sasrec_spec import WEIGHTS_FILE
from online_models.scoring import user_pool
from online_models.serving import ServingModel
from online_models.state import OnlineState

QUICK = SASRecConfig(factors=16, max_len=12, heads=2, dropout=0.0, negatives=32, epochs=60, patience=60,
                     val_users=0, batch_size=32)
CLUSTERS, CLUSTER_SIZE, PLAYS = 10, 12, 10


def cycles_log(n_users: int = 60, seed: int = 0) -> EventBatch:
    """Each user walks 10 steps of the cycle of their cluster's 12 songs (120 songs in all) from a random start,
    with one skip of another cluster's song: order is the whole signal, and the catalogue is large
    enough for the gate's 99 sampled negatives."""
    rng = np.random.default_rng(seed)
    users, songs, kinds, ts = [], [], [], []
    for u in range(n_users):
        c, start = u % CLUSTERS, int(rng.integers(CLUSTER_SIZE))
        walk = [c * CLUSTER_SIZE + (start + j) % CLUSTER_SIZE for j in range(PLAYS)]
        skipped = ((c + 1) % CLUSTERS) * CLUSTER_SIZE + int(rng.integers(CLUSTER_SIZE))
        users += [f"u{u}"] * (PLAYS + 1)
        songs += [f"s{s}" for s in walk] + [f"s{skipped}"]
        kinds += ["play"] * PLAYS + ["skip"]
        ts += [1.7e9 + 60.0 * j + u for j in range(PLAYS)] + [1.7e9 + 30.0 + u]
    return EventBatch.from_columns(np.array(users, dtype=object), np.array(songs, dtype=object),
                                   np.array(kinds, dtype=object), np.array(ts),
                                   event_ids=np.array([f"e{i}" for i in range(len(users))], dtype=object))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[EventLog, Path, RetrainResult, EventBatch]:
    root = tmp_path_factory.mktemp("sasrec")
    events = cycles_log()
    log = EventLog(root / "log")
    log.append(events)
    result = retrain(log, root / "versions", OnlineConfig(factors=16), TrainConfig(model="sasrec"),
                     sasrec_config=QUICK)
    return log, root / "versions", result, events


def test_retrain_trains_on_the_ordered_log_without_the_held_out_songs(trained) -> None:  # type: ignore[no-untyped-def]
    log, _, result, events = trained
    users, songs = log.holdout()
    assert len(users) == 60
    kept = log.read(exclude_holdout=True)
    pairs = set(zip(kept.user_ids.tolist(), kept.song_ids.tolist(), strict=True))
    assert not pairs & set(zip(users.tolist(), songs.tolist(), strict=True))
    held_plays = sum(int(((events.user_ids == u) & (events.song_ids == s)).sum()) for u, s in zip(users, songs,
                                                                                                  strict=True))
    plays = int((events.kinds == PLAY).sum())
    artifact = result.artifact
    assert artifact.kind == "sasrec" and artifact.trained_on["n_plays"] <= plays - held_plays
    assert artifact.trained_on["held_out_users"] == 60
    # time order within each user is kept: the latest plays the gate reads end at the newest play
    play_users, play_songs = log.latest_plays(3, exclude_holdout=True)
    for user in ("u0", "u7"):
        mine = kept.song_ids[(kept.user_ids == user) & (kept.kinds == PLAY)]
        assert play_songs[play_users == user].tolist() == mine[-3:].tolist()


def test_the_gate_scores_a_sasrec_version_on_both_figures(trained) -> None:  # type: ignore[no-untyped-def]
    _, _, result, _ = trained
    figures = result.decision.candidate
    assert {"hr@10", "recall@10", "ndcg@10"} <= set(figures) and figures["users"] == 60
    # the held-out song is the next one of the user's cycle: a working sequence model ranks it first
    assert figures["hr@10"] > 0.95 and figures["recall@10"] > 0.95 and figures["ndcg@10"] > 0.9


def test_a_sasrec_version_round_trips_and_a_corrupt_one_is_refused(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, versions, result, _ = trained
    loaded = load_artifact(versions, result.version)
    weights = loaded.files[WEIGHTS_FILE]
    assert weights == result.artifact.files[WEIGHTS_FILE] and not weights.startswith(b"\x80"), "safetensors"
    model = ServingModel.load(versions, result.version)
    assert model.kind == "sasrec" and model.sequence is not None and model.ranker is None
    np.testing.assert_array_equal(model.index.factors[:len(loaded.song_names)],
                                  SASRecModel.from_bytes(weights).encoder().item_embeddings)
    manifest = (versions / result.version / "manifest.json").read_text()
    assert f"file.{WEIGHTS_FILE}" in manifest and "sha256" in manifest

    copy = tmp_path / "copy"
    version = save_artifact(copy, replace(loaded, version=None))
    path = copy / version / f"file.{WEIGHTS_FILE}"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum"):
        ServingModel.load(copy, version)
    # checksums that match but embeddings that are not the index's: refused too
    other = replace(loaded, version=None, item_factors=loaded.item_factors + 1.0, index_bytes=None)
    with pytest.raises(ArtifactError, match="item embeddings"):
        ServingModel.load(copy, save_artifact(copy, other))


def _exact_top(model: SASRecModel, events: EventBatch, users: np.ndarray, k: int) -> list[list[str]]:
    """The numpy encoder's top-k over every song, songs the user played or skipped removed."""
    seqs = build_sequences(events, model.config.repeats, model.item_names)
    row = {u: i for i, u in enumerate(seqs.users.tolist())}
    encoder = model.encoder()
    states = encoder.encode(right_aligned([seqs.of(row[u]) for u in users], model.config.max_len))
    scores = states @ encoder.item_embeddings.T
    out = []
    for i, user in enumerate(users):
        heard = set(events.song_ids[events.user_ids == user])
        order = [s for s in model.item_names[np.argsort(-scores[i], kind="stable")] if s not in heard]
        out.append(order[:k])
    return out


def _by_sequence_model(online: OnlineALS, users: np.ndarray, k: int) -> list[list[str]]:
    """Each user's top-k of the served version's own signal (``cf``) over their pool of candidates:
    what the sequence model contributes to the blend."""
    served = online.holder.peek()
    p = user_pool(online.state, served, users, k)
    cf = p.features[..., feature_names(online.config).index("cf")].astype(np.float32)
    keys, _ = take_top(p.keys, cf, p.allowed, k)
    return [list(row) for row in online.state.names_of(keys, served.model.index if served else None)]


def test_the_worker_serves_a_sasrec_version_from_recent_plays(trained) -> None:  # type: ignore[no-untyped-def]
    _, versions, result, events = trained
    online = OnlineALS(OnlineConfig(relisten="never"))  # the known answer leaves heard songs out
    online.partial_fit(events)
    serving = ServingModel.load(versions, result.version)
    assert online.install(serving)
    users = np.array([f"u{i}" for i in range(0, 60, 3)], dtype=object)
    assert online.recommend(users, k=5).version == result.version
    expected = _exact_top(SASRecModel.from_bytes(load_artifact(versions, result.version).files[WEIGHTS_FILE]),
                          events, users, 5)
    # the version's nearest songs to each user's sequence state are candidates, scored exactly
    assert _by_sequence_model(online, users, 5) == expected
    assert _by_sequence_model(online, users[:1], 5) == expected[:1], "cached vector, same answer"
    # a new play moves the sequence state without any training; a stranger still gets a list
    nxt = expected[0][0]
    online.partial_fit(EventBatch.from_columns(np.array(["u0"], dtype=object), np.array([nxt], dtype=object),
                                               ts=np.array([1.8e9])))
    moved = _by_sequence_model(online, users[:1], 5)[0]
    assert nxt not in moved and moved != expected[0]
    stranger = online.recommend(np.array(["stranger"], dtype=object), k=5)
    assert (stranger.song_ids[0] != "").all()


def test_served_queries_follow_the_training_rule_for_repeats() -> None:
    items = np.array([[0, 0, 3, 3, 5, 3, 3], [0, 0, 0, 0, 0, 0, 0], [1, 2, 2, 2, 1, 4, 4]])
    assert apply_repeats(items, "collapse").tolist() == [[0, 0, 0, 0, 3, 5, 3], [0] * 7, [0, 0, 0, 1, 2, 1, 4]]
    assert apply_repeats(items, "first").tolist() == [[0, 0, 0, 0, 0, 3, 5], [0] * 7, [0, 0, 0, 0, 1, 2, 4]]
    assert apply_repeats(items, "keep").tolist() == items.tolist()
    ev = EventBatch.from_columns(np.array(["a"] * 6, dtype=object),
                                 np.array(["x", "x", "y", "x", "x", "z"], dtype=object), ts=np.arange(6.0))
    for rule in ("collapse", "first", "keep"):
        seqs = build_sequences(ev, rule, np.array(["x", "y", "z"], dtype=object))
        rows = np.r_[np.zeros(7 - len(seqs.of(0)), np.int64), seqs.of(0)]
        raw = np.array([[0, 1, 1, 2, 1, 1, 3]])
        assert apply_repeats(raw, rule).tolist() == [rows.tolist()], rule


def test_the_sequence_window_is_the_online_states_recent_plays() -> None:
    state = OnlineState(OnlineConfig(recent_plays=4))
    state.learn(EventBatch.from_columns(np.array(["a"] * 6, dtype=object),
                                       np.array([f"s{i}" for i in range(6)], dtype=object),
                                       np.array(["play"] * 5 + ["skip"], dtype=object), ts=np.arange(6.0)))
    keys = state.recent.gather(np.array(["a", "b"], dtype=object))
    assert keys.tolist() == [song_keys([f"s{i}" for i in range(1, 5)]).tolist(), [-1] * 4], "plays only, newest last"


def test_versions_of_every_kind_are_compared_on_one_slice(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log, _, result, _ = trained
    als = retrain(log, tmp_path, OnlineConfig(factors=8), served=result.artifact)
    assert als.decision.served == pytest.approx(result.decision.candidate), "the served sasrec, same figures"
    assert set(als.decision.details["checks"]) == {"hr@10", "recall@10"}
    sasrec = retrain(log, tmp_path, OnlineConfig(factors=8), TrainConfig(model="sasrec"), served=als.artifact,
                     sasrec_config=QUICK)
    assert sasrec.decision.served == pytest.approx(als.decision.candidate)
    assert sasrec.decision.candidate == pytest.approx(result.decision.candidate), "deterministic given the seed"


def test_a_refusal_carries_both_figures_to_the_manifest_and_the_history(trained, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    log, _, result, _ = trained
    served = result.decision.candidate
    worse_recall = dict(served, **{"hr@10": served["hr@10"] + 0.05, "recall@10": served["recall@10"] - 0.2})
    monkeypatch.setattr("offline.retrain.version_metrics",
                        lambda artifact, *a, **kw: worse_recall if artifact is not result.artifact else served)
    refused = retrain(log, tmp_path, OnlineConfig(factors=8), served=result.artifact)
    assert not refused.decision.publish and "recall@10" in refused.decision.reason
    gate = load_artifact(tmp_path, refused.version).metrics["gate"]
    assert gate["candidate"]["recall@10"] == worse_recall["recall@10"] and gate["served"]["hr@10"] == served["hr@10"]
    assert gate["checks"]["recall@10"]["ok"] is False and gate["checks"]["hr@10"]["ok"] is True
    registry = VersionRegistry(tmp_path, MemoryPointer())
    registry.refuse(refused.version, refused.decision.as_dict())
    record = registry.history(1)[0]["gate"]
    assert record["candidate"]["hr@10"] == worse_recall["hr@10"]
    assert record["served"]["recall@10"] == served["recall@10"]
