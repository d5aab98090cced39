"""Redis at the edge: key names (one helper), the recommendation value format, reader and writer.

Value of ``<ns>:recs:<user>`` (JSON)::

    {"user_id": "u1", "model_version": "20261123T101500123456Z-als", "updated_at": 1795425202.79,
     "last_event": {"event_id": "...", "ts": 1795425202.1, "produced_at": 1795425202.75} | null,
     "items": [{"song_id": "...", "score": 0.71, "because": "because you played X" | null}, ...]}

Unknown users read ``<ns>:popular`` (same shape, ``user_id`` null).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import redis
from redis.exceptions import RedisError

from index_manager.registry import VersionRegistry
from online_models.base import MAX_K, RecList
from stream.errors import ConfigError, ServiceUnavailable
from stream.settings import StreamConfig

_UNRESERVED = re.compile(r"[A-Za-z0-9\-_.~@]*")  # exactly what quote(safe="-_.~@") leaves alone


@dataclass(frozen=True)
class RedisKeys:
    """Every Redis key name of the project. User and song ids are percent-encoded, so an id can
    never contain a separator and address another key."""

    namespace: str = "musicrec"

    @staticmethod
    def _part(value: str) -> str:
        # most ids need no escaping, and the check is a third of quote()'s cost on every read
        return value if _UNRESERVED.fullmatch(value) else quote(value, safe="-_.~@")

    def recs(self, user_id: str) -> str:
        return f"{self.namespace}:recs:{self._part(user_id)}"

    def popular(self) -> str:
        return f"{self.namespace}:popular"

    # the pointer and the history change in one transaction: the hash tag keeps them in one slot of
    # a Redis Cluster (only the part in braces is hashed)
    def model_pointer(self) -> str:
        return f"{self.namespace}:{{model}}:current"

    def model_channel(self) -> str:
        return f"{self.namespace}:model:published"

    def model_history(self) -> str:
        return f"{self.namespace}:{{model}}:history"

    def ab_test(self) -> str:
        return f"{self.namespace}:ab"

    def stats(self, worker: str) -> str:
        return f"{self.namespace}:stats:{self._part(worker)}"

    def stats_pattern(self) -> str:
        return f"{self.namespace}:stats:*"


def as_text(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def connect(url: str, timeout: float = 2.0, cluster: bool = False) -> redis.Redis:
    """A redis-py client for ``url`` (redis://, rediss://, unix://), checked with PING. With
    ``cluster``, ``url`` names any node of a Redis Cluster and the client follows the slot map
    (a ``redis.RedisCluster``, which offers the same commands; see :func:`mget` and :func:`scan_step`)."""
    if not url:
        raise ConfigError("REDIS_URL is not set (or run `musicrec up` and export what it prints)")
    try:
        if cluster:
            client: redis.Redis = redis.RedisCluster.from_url(  # type: ignore[assignment]
                url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30)
        else:
            client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                          health_check_interval=30)
        client.ping()
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL is not a valid Redis URL ({exc})") from exc
    except RedisError as exc:
        raise ServiceUnavailable(f"Redis at {redacted(url)} is unreachable ({exc})") from exc
    return client


def connect_to(cfg: StreamConfig, timeout: float = 2.0) -> redis.Redis:
    """:func:`connect` with the settings' URL and cluster mode."""
    return connect(cfg.redis_url, timeout, cfg.redis_cluster)


def is_cluster(client: redis.Redis) -> bool:
    return isinstance(client, redis.RedisCluster)


def mget(client: redis.Redis, keys: Sequence[str | bytes]) -> list[Any]:
    """Values of ``keys`` in their order. On a cluster, one MGET per slot (``mget_nonatomic``): a
    single MGET over keys of several slots is refused there."""
    if not keys:
        return []
    if is_cluster(client):
        return client.mget_nonatomic(list(keys))  # type: ignore[attr-defined]
    return client.mget(keys)


def mset(client: redis.Redis, values: dict[str, bytes]) -> None:
    """SET of every key: one MSET (one command to pack, where a pipeline of SETs packs one per key);
    on a cluster, one per slot (``mset_nonatomic``)."""
    if not values:
        return
    if is_cluster(client):
        client.mset_nonatomic(values)  # type: ignore[attr-defined]
    else:
        client.mset(values)


ScanCursor = int | dict[str, int]


def scan_step(client: redis.Redis, cursor: ScanCursor, match: str, count: int) -> tuple[ScanCursor, list[Any]]:
    """One bounded SCAN step over every key matching ``match``; start and end with cursor 0. On a
    cluster the cursor holds one position per primary, each stepped once per call."""
    if not is_cluster(client):
        return client.scan(int(cursor) if not isinstance(cursor, dict) else 0, match=match, count=count)
    scan: Any = client.scan  # a cluster's SCAN answers (cursor per primary, keys), not redis.Redis's shape
    cursors: dict[str, int] = {}
    keys: list[Any] = []
    if not isinstance(cursor, dict) or not cursor:
        cursors, keys = scan(match=match, count=count)  # every primary, from their start
    else:
        for name, position in cursor.items():
            node = client.get_node(node_name=name)  # type: ignore[attr-defined]
            step, found = scan(position, match=match, count=count, target_nodes=node)
            cursors.update(step)
            keys += found
    left = {name: c for name, c in cursors.items() if c}
    return (left or 0), list(keys)


class LazyRedis:
    """One redis-py client, connected on first use: a reader (the API) must start, and answer 503,
    while Redis is down rather than refuse to start. redis-py reconnects by itself after that."""

    def __init__(self, url: str, cluster: bool = False) -> None:
        if not url:
            raise ConfigError("REDIS_URL is not set (or run `musicrec up` and export what it prints)")
        self.url = url
        self.cluster = cluster
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def get(self) -> redis.Redis:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self.url, cluster=self.cluster)
                client = self._client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise ServiceUnavailable(f"Redis failed while {what} ({exc})") from exc


def _json_scores(scores: Any) -> list[Any]:
    """Scores rounded to 6 decimals as Python floats, None where not finite (one numpy pass for a
    whole matrix: per-item float() and round() cost more than the JSON encoding itself)."""
    rounded = np.round(np.asarray(scores, np.float64), 6)
    out = rounded.astype(object)
    out[~np.isfinite(rounded)] = None
    return out.tolist()


def _encode(user_id: str | None, songs: Sequence[str], scores: Sequence[float | None], reasons: Sequence[str | None],
            version: str, updated_at: float, last_event: dict[str, Any] | None, arm: str | None) -> bytes:
    items = [{"song_id": s, "score": v, "because": r} for s, v, r in zip(songs, scores, reasons, strict=True) if s]
    # orjson writes the same compact layout (keys in this order, no spaces) ~5x faster
    head: dict[str, Any] = {"user_id": user_id, "model_version": version, "updated_at": updated_at,
                            "last_event": last_event}
    if arm is not None:
        head["arm"] = arm  # only while an A/B test runs
    return orjson.dumps({**head, "items": items})


def encode_value(user_id: str | None, songs: Sequence[str], scores: Sequence[float] | np.ndarray,
                 reasons: Sequence[str | None], version: str, updated_at: float,
                 last_event: dict[str, Any] | None = None, arm: str | None = None) -> bytes:
    return _encode(user_id, list(songs), _json_scores(scores), list(reasons), version, updated_at, last_event, arm)


def encode_values(users: Sequence[str | None] | np.ndarray, recs: RecList, updated_at: float,
                  last_events: Sequence[dict[str, Any] | None] | None = None, arm: str | None = None) -> list[bytes]:
    """:func:`encode_value` of every row of ``recs`` (row i is user i's list)."""
    songs, scores, reasons = recs.song_ids.tolist(), _json_scores(recs.scores), recs.reasons.tolist()
    return [_encode(user, songs[i], scores[i], reasons[i], recs.version, updated_at,
                    None if last_events is None else last_events[i], arm) for i, user in enumerate(users)]


_ITEMS = b'"items":['
_NEXT_ITEM = b',{"song_id":'
_JSON = json.JSONDecoder()  # json.loads builds or looks one up, and sniffs the encoding, per call


def _loads_head(raw: bytes | str, k: int | None) -> dict[str, Any]:
    """``json.loads`` of a stored value, parsing at most the first ``k`` items when it can.

    Parsing is nearly all of what a read costs (a value holds ~20 items, a reader usually wants
    10), so the items after the k-th are cut off before parsing. That relies on the layout
    :func:`encode_value` writes: compact separators, ``items`` the last key, each item starting
    with ``{"song_id":``. Inside a JSON string every quote is escaped, so that marker cannot occur
    within a song id or reason. Anything else parses whole, as does a cut that turns out invalid.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if k is not None and k > 0 and raw.endswith(b"]}"):
        start = raw.rfind(_ITEMS)  # items is last, and nothing inside an item can spell this key
        # split, not a loop of find(): the k-th separator is located in C
        rest = raw[start:].split(_NEXT_ITEM, k) if start >= 0 else []
        if len(rest) == k + 1:
            try:
                return _JSON.decode((raw[:len(raw) - len(rest[-1]) - len(_NEXT_ITEM)] + b"]}").decode("utf-8"))
            except ValueError:
                pass
    return json.loads(raw)


@dataclass(frozen=True)
class Recs:
    """One user's stored list, as read back."""

    user_id: str | None
    items: list[dict[str, Any]]
    model_version: str
    updated_at: float
    last_event: dict[str, Any] | None
    fallback: bool = False  # True when the user had no list and popularity was served
    arm: str | None = None  # the A/B arm that wrote the list, while a test runs

    @property
    def song_ids(self) -> list[str]:
        return [i["song_id"] for i in self.items]

    @classmethod
    def decode(cls, raw: bytes | str, fallback: bool = False, k: int | None = None) -> Recs:
        """Parse a stored value; with ``k``, keep only the first ``k`` items."""
        obj = _loads_head(raw, k)
        items = obj["items"] if k is None else obj["items"][:k]
        return cls(obj.get("user_id"), items, obj["model_version"], obj["updated_at"], obj.get("last_event"),
                   fallback, obj.get("arm"))

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "model_version": self.model_version, "updated_at": self.updated_at,
                "last_event": self.last_event, "fallback": self.fallback, "arm": self.arm, "items": self.items}


class RecsWriter:
    """Writes many users' lists in one MSET (the worker's only Redis write per batch)."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def write(self, users: np.ndarray, recs: RecList, last_events: Sequence[dict[str, Any] | None] | None = None,
              popular: RecList | None = None, arm: str | None = None) -> float:
        now = time.time()
        values = dict(zip((self.keys.recs(user) for user in users), encode_values(users, recs, now, last_events, arm),
                          strict=True))
        if popular is not None and len(popular):
            values[self.keys.popular()] = encode_values([None], popular, now)[0]
        with translate_errors("writing recommendations"):
            mset(self.client, values)
        return now

    def delete(self, users: Sequence[str]) -> int:
        """Remove users' lists (a forgotten user); returns how many existed."""
        if not len(users):
            return 0
        with translate_errors("deleting recommendations"):
            # one DEL per key, pipelined: a multi-key DEL would span a cluster's slots
            pipe = self.client.pipeline(transaction=False)
            for user in users:
                pipe.delete(self.keys.recs(user))
            return int(sum(pipe.execute()))

    def holding(self, users: Sequence[str], song_ids: Sequence[str], chunk: int = 1000) -> list[str]:
        """Those of ``users`` whose stored list holds any of ``song_ids`` (read in MGETs of ``chunk``;
        matched on the bytes :func:`encode_value` writes, without parsing)."""
        needles = [b'"song_id":' + orjson.dumps(s) + b"," for s in song_ids]
        found: list[str] = []
        for start in range(0, len(users), chunk):
            part = list(users[start:start + chunk])
            with translate_errors("reading recommendations"):
                values = mget(self.client, [self.keys.recs(u) for u in part])
            found += [u for u, raw in zip(part, values, strict=True)
                      if raw is not None and any(n in raw for n in needles)]
        return found


class RecsClient:
    """What a reading service uses: ``get`` / ``get_many`` with a popularity fallback."""

    def __init__(self, url: str, namespace: str = "musicrec", client: redis.Redis | None = None,
                 cluster: bool = False) -> None:
        self.client = client or connect(url, cluster=cluster)
        self.keys = RedisKeys(namespace)

    def get(self, user_id: str, k: int = 10) -> Recs | None:
        return self.get_many([user_id], k)[0]

    def get_many(self, user_ids: Sequence[str], k: int = 10) -> list[Recs | None]:
        """One pipelined round trip; unknown users get the popularity list (``fallback=True``), or
        None when nothing has been published yet."""
        if not 0 < k <= MAX_K:
            raise ValueError(f"k must be within 1..{MAX_K}, got {k}")
        # one MGET rather than a pipeline of GETs: redis-py packs and parses one command instead of
        # one per user, which was a third of a batch's cost (see `musicrec bench serve`); on a
        # cluster, one MGET per slot
        keys = [self.keys.recs(user) for user in user_ids]
        keys.append(self.keys.popular())
        with translate_errors("reading recommendations"):
            *values, popular = mget(self.client, keys)
        fallback: Recs | None = None
        out: list[Recs | None] = []
        for raw in values:
            if raw is not None:
                out.append(Recs.decode(raw, k=k))
            elif popular is not None:
                if fallback is None:  # parsed once per call, however many users are unknown
                    fallback = Recs.decode(popular, fallback=True, k=k)
                # each user gets its own item dicts, so a caller editing one list cannot edit another
                out.append(replace(fallback, items=[dict(i) for i in fallback.items]))
            else:
                out.append(None)
        return out


    def get_excluding(self, user_id: str, k: int, exclude: set[str]) -> Recs | None:
        """``user_id``'s list without the songs in ``exclude``, refilled to ``k`` from the rest of the
        stored list (``MUSICREC_K`` songs), then from the popular list; None when nothing is stored."""
        if not 0 < k <= MAX_K:
            raise ValueError(f"k must be within 1..{MAX_K}, got {k}")
        with translate_errors("reading recommendations"):
            raw, popular = mget(self.client, [self.keys.recs(user_id), self.keys.popular()])
        if raw is not None:
            base = Recs.decode(raw)
        elif popular is not None:
            base = Recs.decode(popular, fallback=True)
        else:
            return None
        items = [i for i in base.items if i["song_id"] not in exclude][:k]
        if len(items) < k and raw is not None and popular is not None:
            taken = exclude | {i["song_id"] for i in items}
            items += [i for i in Recs.decode(popular).items if i["song_id"] not in taken][:k - len(items)]
        return replace(base, items=items)


class RedisPointer:
    """The version registry's pointer and history in Redis (``index_manager.registry.PointerStore``):
    ``<ns>:{model}:current``, ``<ns>:{model}:history`` (a list, newest first; both in one hash slot),
    and a message on ``<ns>:model:published`` for whoever subscribes."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def read(self) -> str | None:
        with translate_errors("reading the model pointer"):
            raw = self.client.get(self.keys.model_pointer())
        return None if raw is None else as_text(raw)

    def publish(self, version: str, record: str, keep: int) -> None:
        with translate_errors("publishing a model version"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.keys.model_pointer(), version)
            pipe.lpush(self.keys.model_history(), record)
            pipe.ltrim(self.keys.model_history(), 0, keep - 1)
            pipe.execute()
            # outside the transaction: a cluster refuses PUBLISH in one (a channel has no slot)
            self.client.publish(self.keys.model_channel(), version)

    def record(self, record: str, keep: int) -> None:
        with translate_errors("recording a model version"):
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(self.keys.model_history(), record)
            pipe.ltrim(self.keys.model_history(), 0, keep - 1)
            pipe.execute()

    def history(self, n: int) -> list[str]:
        with translate_errors("reading the model history"):
            return [as_text(r) for r in self.client.lrange(self.keys.model_history(), 0, n - 1)]


def version_registry(client: redis.Redis, keys: RedisKeys, artifacts_dir: str | Path) -> VersionRegistry:
    """The one registry of model versions, with its pointer in Redis."""
    return VersionRegistry(artifacts_dir, RedisPointer(client, keys))
