"""Versioned model artifacts on disk: written aside, renamed atomically, checksummed, never pickled.

A version is a directory ``<root>/<version>/`` holding ``manifest.json`` (what it is, what it was
trained on, its metrics and the sha256 of every other file), ``.npy`` arrays (loaded with
``allow_pickle=False``), JSON id lists, the serialized FAISS index and optional extra files
(e.g. ``ncf.safetensors``). A reader that finds a missing file or a wrong checksum refuses the
version; a writer never exposes a half-written directory because it renames it into place last.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
FORMAT = 1
_VERSION_RE = re.compile(r"^\d{8}T\d{12}Z-[a-z0-9-]+$")


class ArtifactError(Exception):
    """A model version on disk is missing, half-written, corrupt or fails its checksum."""


@dataclass
class ModelArtifact:
    """Everything a worker needs to serve one trained model version."""

    kind: str
    song_names: np.ndarray
    item_factors: np.ndarray
    user_names: np.ndarray
    user_factors: np.ndarray
    popularity: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    index_bytes: bytes | None = None
    version: str | None = None
    created_at: float | None = None

    def __post_init__(self) -> None:
        self.song_names = np.asarray(self.song_names, dtype=object)
        self.user_names = np.asarray(self.user_names, dtype=object)
        self.item_factors = np.asarray(self.item_factors, dtype=np.float32)
        self.user_factors = np.asarray(self.user_factors, dtype=np.float32)
        self.popularity = np.asarray(self.popularity, dtype=np.float64)
        if self.item_factors.ndim != 2 or len(self.item_factors) != len(self.song_names):
            raise ValueError(f"item_factors {self.item_factors.shape} do not match "
                             f"{len(self.song_names)} songs")
        if self.user_factors.ndim != 2 or len(self.user_factors) != len(self.user_names):
            raise ValueError(f"user_factors {self.user_factors.shape} do not match "
                             f"{len(self.user_names)} users")
        if len(self.user_names) and self.user_factors.shape[1] != self.item_factors.shape[1]:
            raise ValueError("user and item factors have different widths")
        if self.popularity.shape != (len(self.song_names),):
            raise ValueError("popularity must have one count per song")

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])


def new_version_name(kind: str, now: float | None = None) -> str:
    """Sortable, unique-enough name: UTC time to the microsecond plus the model kind."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return stamp.strftime("%Y%m%dT%H%M%S%f") + "Z-" + re.sub(r"[^a-z0-9-]", "-", kind.lower())


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(root: str | Path, artifact: ModelArtifact, version: str | None = None) -> str:
    """Write ``artifact`` as a new version under ``root``; returns the version name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = version or new_version_name(artifact.kind)
    if not _VERSION_RE.match(version):
        raise ValueError(f"bad version name {version!r}")
    if (root / version).exists():
        raise ArtifactError(f"version {version} already exists in {root}")
    payload: dict[str, bytes] = {
        "song_names.json": _json_bytes([str(s) for s in artifact.song_names]),
        "user_names.json": _json_bytes([str(u) for u in artifact.user_names]),
        "item_factors.npy": _npy_bytes(artifact.item_factors),
        "user_factors.npy": _npy_bytes(artifact.user_factors),
        "popularity.npy": _npy_bytes(artifact.popularity),
    }
    for name, arr in artifact.arrays.items():
        payload[f"array.{name}.npy"] = _npy_bytes(np.asarray(arr))
    for name, values in artifact.lists.items():
        payload[f"list.{name}.json"] = _json_bytes([str(v) for v in values])
    for name, data in artifact.files.items():
        payload[f"file.{name}"] = data
    if artifact.index_bytes is not None:
        payload["index.faiss"] = artifact.index_bytes
    created_at = time.time()
    manifest = {
        "format": FORMAT,
        "version": version,
        "kind": artifact.kind,
        "created_at": created_at,
        "factors": artifact.factors,
        "n_songs": len(artifact.song_names),
        "n_users": len(artifact.user_names),
        "params": artifact.params,
        "trained_on": artifact.trained_on,
        "metrics": artifact.metrics,
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in payload.items()},
    }
    tmp = root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in {**payload, MANIFEST: _json_bytes(manifest)}.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.rename(tmp, root / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    artifact.version, artifact.created_at = version, created_at
    return version


def read_manifest(root: str | Path, version: str) -> dict[str, Any]:
    path = Path(root) / version / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"version {version}: no manifest at {path}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"version {version}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise ArtifactError(f"version {version}: manifest has an unknown format")
    return manifest


def load_artifact(root: str | Path, version: str) -> ModelArtifact:
    """Load and verify a version; raises ArtifactError on anything missing, corrupt or unsafe."""
    if not _VERSION_RE.match(version):
        raise ArtifactError(f"bad version name {version!r}")
    manifest = read_manifest(root, version)
    base = Path(root) / version
    data: dict[str, bytes] = {}
    for name, meta in manifest["files"].items():
        if "/" in name or name.startswith("."):
            raise ArtifactError(f"version {version}: unsafe file name {name!r} in manifest")
        try:
            blob = (base / name).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactError(f"version {version}: file {name} is missing") from exc
        if _sha256(blob) != meta.get("sha256"):
            raise ArtifactError(f"version {version}: checksum mismatch for {name}")
        data[name] = blob

    def npy(name: str) -> np.ndarray:
        try:
            return np.load(io.BytesIO(data[name]), allow_pickle=False)
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"version {version}: cannot read array {name} ({exc})") from exc

    def names(name: str) -> np.ndarray:
        try:
            return np.asarray(json.loads(data[name]), dtype=object)
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"version {version}: cannot read id list {name} ({exc})") from exc

    try:
        artifact = ModelArtifact(
            kind=manifest["kind"],
            song_names=names("song_names.json"),
            item_factors=npy("item_factors.npy"),
            user_names=names("user_names.json"),
            user_factors=npy("user_factors.npy"),
            popularity=npy("popularity.npy"),
            params=manifest.get("params", {}),
            trained_on=manifest.get("trained_on", {}),
            metrics=manifest.get("metrics", {}),
            arrays={n[6:-4]: npy(n) for n in data if n.startswith("array.")},
            lists={n[5:-5]: list(names(n)) for n in data if n.startswith("list.")},
            files={n[5:]: data[n] for n in data if n.startswith("file.")},
            index_bytes=data.get("index.faiss"),
            version=version,
            created_at=manifest.get("created_at"),
        )
    except ValueError as exc:
        raise ArtifactError(f"version {version}: inconsistent arrays ({exc})") from exc
    if not np.isfinite(artifact.item_factors).all():
        raise ArtifactError(f"version {version}: item factors contain NaN/inf")
    return artifact


def list_versions(root: str | Path) -> list[str]:
    """Complete versions under ``root``, oldest first (temporary directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and _VERSION_RE.match(p.name) and (p / MANIFEST).exists())


def latest_version(root: str | Path) -> str | None:
    versions = list_versions(root)
    return versions[-1] if versions else None
