"""Artifacts: versioned, content-addressed folders under the artifact root, written atomically.

Layout: <root>/<asset>/<language>/<version>/ (the files and manifest.json) and
<root>/<asset>/<language>/latest -> <version>, moved only after a version is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MANIFEST = "manifest.json"
LATEST = "latest"


@dataclass(frozen=True)
class Artifact:
    """One stored version of an asset partition's artifact."""

    asset: str
    language: str
    version: str
    path: Path

    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())


def content_hash(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> str:
    """A sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in exclude:
            h.update(p.relative_to(folder).as_posix().encode() + b"\0")
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def input_key(**inputs: object) -> str:
    """A hash of what an artifact was made from (input versions, config, code version)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ArtifactStore:
    """The local artifact root; optionally mirrored to S3 after each version is complete."""

    def __init__(self, root: Path | str, mirror=None):
        self.root = Path(root)
        self.mirror = mirror  # an object with upload_folder(local: Path, key_prefix: str)

    def folder(self, asset: str, language: str) -> Path:
        return self.root / asset / language

    def latest(self, asset: str, language: str) -> Artifact | None:
        """The newest good version, or None if the asset partition was never materialized."""
        link = self.folder(asset, language) / LATEST
        if not link.is_symlink() and not link.exists():
            return None
        target = link.resolve()
        if not (target / MANIFEST).is_file():
            return None
        return Artifact(asset, language, target.name, target)

    def require(self, asset: str, language: str) -> Artifact:
        """The latest version of an upstream artifact, or a clear error telling what to materialize."""
        art = self.latest(asset, language)
        if art is None:
            raise FileNotFoundError(
                f"No `{asset}` artifact for partition `{language}` under {self.folder(asset, language)}. "
                f"Fix: materialize `{asset}` for `{language}` first (dagster asset materialize --select {asset} --partition {language})."
            )
        return art

    def reusable(self, asset: str, language: str, key: str) -> Artifact | None:
        """The latest version if it was made from exactly these inputs (so nothing needs redoing)."""
        art = self.latest(asset, language)
        if art is not None and art.manifest().get("input_key") == key:
            return art
        return None

    @contextlib.contextmanager
    def write(self, asset: str, language: str, manifest: dict) -> Iterator["PendingArtifact"]:
        """Yield a temp folder to fill; on success it becomes a content-addressed version and `latest`.

        On any exception the temp folder is removed and `latest` is left as it was.
        """
        base = self.folder(asset, language)
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
        pending = PendingArtifact(tmp)
        started = time.time()
        try:
            yield pending
            version = content_hash(tmp)[:16]
            final = base / version
            man = {**manifest, "asset": asset, "language": language, "version": version,
                   "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "seconds": round(time.time() - started, 3)}
            if final.exists():  # identical content already stored: keep the first copy
                shutil.rmtree(tmp)
            else:
                (tmp / MANIFEST).write_text(json.dumps(man, indent=2, sort_keys=True, default=str))
                os.replace(tmp, final)
            self._point_latest(base, version)
            pending.artifact = Artifact(asset, language, version, final)
            if self.mirror is not None:
                self.mirror.upload_folder(final, f"{asset}/{language}/{version}")
                self.mirror.put_text(f"{asset}/{language}/{LATEST}", version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _point_latest(base: Path, version: str) -> None:
        tmp_link = base / f".latest-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        os.symlink(version, tmp_link)
        os.replace(tmp_link, base / LATEST)


class PendingArtifact:
    """A version being written: `.path` to fill; `.artifact` once it is stored."""

    def __init__(self, path: Path):
        self.path = path
        self.artifact: Artifact | None = None
