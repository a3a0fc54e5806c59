"""Artifacts: versioned, content-addressed folders under the artifact root, written atomically.

Layout of one asset partition, <root>/<asset>/<language>/:

- <version>/          the files and manifest.json; <version> is a hash of the content
- candidate -> <v>    the newest version written (what the last materialization produced)
- promoted  -> <v>    the newest version that passed its checks: what downstream stages, `forge status`
                      and deploys use. A failed or rejected version never moves it.
- history.jsonl       one JSON line per event, oldest first: `promote` whenever `promoted` moves to another
                      version, and what deploys and rollbacks record (`deploy`, `rollback`); see log_event().

A version is written into a private `.tmp-<pid>-*` folder and renamed into place only when complete.
Folders left behind by a killed process are removed the next time anything is written there.

Private by default (forge_assets.private): before anything is written the root is made 0700 (an existing one too,
so a store written by an earlier Forge is locked) and the umask 077, so every folder is 0700 and every file 0600.
Manifests and history lines pass through redact_text: a repository URL with credentials never lands in one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from forge_assets.files import pid_alive
from forge_assets.private import ensure_private_dir, redact_text

MANIFEST = "manifest.json"
CANDIDATE = "candidate"
PROMOTED = "promoted"
LEGACY_LATEST = "latest"  # stores written before promotion existed: their `latest` counts as promoted
POINTERS = (CANDIDATE, PROMOTED, LEGACY_LATEST)
TMP_PREFIX = ".tmp-"
HISTORY = "history.jsonl"  # a file beside the version folders; never a version, never removed by gc
ROLLBACK = "rollback"


class ArtifactError(RuntimeError):
    """An artifact needed by a stage is missing or not allowed; the message names it and the fix."""


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
        self.mirror = mirror  # an object with upload_folder(local: Path, key_prefix: str) and put_text(rel, text)

    def folder(self, asset: str, language: str) -> Path:
        """<root>/<asset>/<language>: the partition key is checked here, where it becomes a path, whoever added it
        (forge.yaml, the CLI, the sensor, or a key added by hand in the Dagster UI)."""
        from forge_assets.languages import check_language_name

        return self.root / asset / check_language_name(language, f"the `{asset}` partition key")

    def private_root(self) -> Path:
        """The root, created or locked 0700, with the process umask 077: called before anything is written."""
        return ensure_private_dir(self.root)

    # -- reading -----------------------------------------------------------------------------------

    def _pointer(self, asset: str, language: str, name: str) -> Artifact | None:
        link = self.folder(asset, language) / name
        if not link.is_symlink() and not link.exists():
            return None
        target = link.resolve()
        if not (target / MANIFEST).is_file():
            return None
        return Artifact(asset, language, target.name, target)

    def promoted(self, asset: str, language: str) -> Artifact | None:
        """The version downstream stages use: the newest one that passed its checks, or None."""
        return self._pointer(asset, language, PROMOTED) or self._pointer(asset, language, LEGACY_LATEST)

    def candidate(self, asset: str, language: str) -> Artifact | None:
        """The newest version written, promoted or not."""
        return self._pointer(asset, language, CANDIDATE) or self.promoted(asset, language)

    def get(self, asset: str, language: str, version: str) -> Artifact:
        """An exact version, or a clear error if it is gone (removed by `forge gc`, or never made)."""
        path = self.folder(asset, language) / version
        if not (path / MANIFEST).is_file():
            raise ArtifactError(
                f"`{asset}` version {version} for `{language}` is not under {self.folder(asset, language)} (removed or never completed). "
                f"Fix: rematerialize `{asset}` for `{language}`.")
        return Artifact(asset, language, version, path)

    def require(self, asset: str, language: str) -> Artifact:
        """The promoted version of an upstream artifact, or a clear error telling what to materialize."""
        art = self.promoted(asset, language)
        if art is None:
            hint = ""
            if (cand := self._pointer(asset, language, CANDIDATE)) is not None:
                hint = f" Its newest version {cand.version} was not promoted (it failed a check)."
            raise ArtifactError(
                f"No promoted `{asset}` artifact for partition `{language}` under {self.folder(asset, language)}.{hint} "
                f"Fix: materialize `{asset}` for `{language}` first and make it pass its checks "
                f"(dagster asset materialize -m forge_assets.definitions --select {asset} --partition {language}).")
        return art

    def reusable(self, asset: str, language: str, key: str) -> Artifact | None:
        """A stored version made from exactly these inputs (the candidate or the promoted one), so nothing needs redoing."""
        for art in (self._pointer(asset, language, CANDIDATE), self.promoted(asset, language)):
            if art is not None and art.manifest().get("input_key") == key:
                return art
        return None

    def versions(self, asset: str, language: str) -> list[Artifact]:
        """Every complete version of an asset partition, oldest first."""
        base = self.folder(asset, language)
        if not base.is_dir():
            return []
        arts = [Artifact(asset, language, p.name, p) for p in base.iterdir()
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
        return sorted(arts, key=lambda a: ((a.path / MANIFEST).stat().st_mtime, a.version))

    def languages(self, asset: str) -> list[str]:
        """The language folders under <root>/<asset>: valid partition keys only (not `_endpoint`, locks or strays)."""
        from forge_assets.languages import language_name_problem

        base = self.root / asset
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and language_name_problem(p.name) is None)

    def partitions(self) -> Iterator[tuple[str, str]]:
        """Every (asset, language) folder under the root."""
        if not self.root.is_dir():
            return
        for asset_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for language in self.languages(asset_dir.name):
                if any((asset_dir / language).glob(f"*/{MANIFEST}")):
                    yield asset_dir.name, language

    # -- writing -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self, asset: str, language: str, manifest: dict, promote: bool = True) -> Iterator["PendingArtifact"]:
        """Yield a temp folder to fill; on success it becomes a content-addressed version and the `candidate`.

        With promote=True it is also `promoted` at once (stages without checks); otherwise the stage
        calls promote() when its checks pass. On any exception the temp folder is removed and both
        pointers stay as they were. The manifest dict may be filled in while the block runs.
        """
        self.private_root()
        base = self.folder(asset, language)
        base.mkdir(parents=True, exist_ok=True)
        self.remove_stale(base)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=base))
        pending = PendingArtifact(tmp)
        started = time.time()
        try:
            yield pending
            version = content_hash(tmp)[:16]
            final = base / version
            man = {**manifest, "asset": asset, "language": language, "version": version,
                   "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "seconds": round(time.time() - started, 3)}
            if (final / MANIFEST).is_file():  # identical content already stored: keep the first copy
                shutil.rmtree(tmp)
            else:
                (tmp / MANIFEST).write_text(redact_text(json.dumps(man, indent=2, sort_keys=True, default=str)))
                try:
                    os.replace(tmp, final)  # a whole folder, named .tmp-<pid>- so remove_stale can clean a killed writer's
                except OSError as exc:
                    # Another writer stored the same content first (rename onto a non-empty folder): theirs stands.
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (final / MANIFEST).is_file():
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)
            pending.artifact = Artifact(asset, language, version, final)
            if self.mirror is not None:
                self.mirror.upload_folder(final, f"{asset}/{language}/{version}")
            self._point(base, CANDIDATE, version)
            if promote:
                self.promote(pending.artifact)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def workdir(self, prefix: str) -> Iterator[Path]:
        """A scratch folder under <root>/.work, removed afterwards (or by the next run, if this process is killed)."""
        base = self.private_root() / ".work"
        base.mkdir(parents=True, exist_ok=True)
        self.remove_stale(base)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{prefix}-", dir=base))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def promote(self, art: Artifact, *, record: bool = True) -> None:
        """Make a stored version the one downstream stages use.

        When `promoted` moves to another version, a `promote` event (with `from`, the version it left) goes to the
        partition's history; re-pointing it at the version it already names records nothing. record=False leaves
        the history to the caller (a rollback records its own event).
        """
        before = self.promoted(art.asset, art.language)
        self._point(self.folder(art.asset, art.language), PROMOTED, art.version)
        if record and (before is None or before.version != art.version):
            self.log_event(art.asset, art.language, "promote", art.version, **{"from": before.version if before else None})

    def mark_candidate(self, art: Artifact) -> None:
        """Make a stored version the candidate again (a stage reused it instead of writing a new one)."""
        self._point(self.folder(art.asset, art.language), CANDIDATE, art.version)

    # -- history -----------------------------------------------------------------------------------

    def log_event(self, asset: str, language: str, event: str, version: str, **fields: object) -> dict:
        """Append one event to <root>/<asset>/<language>/history.jsonl and return it.

        The line is `{"at": <UTC ISO 8601>, "event", "version", **fields}`, written with a single write() on a
        file opened O_APPEND, so lines of concurrent writers never interleave.
        """
        rec: dict = {"at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "event": event, "version": version}
        rec.update({k: v for k, v in fields.items() if k not in rec})
        line = (redact_text(json.dumps(rec, default=str, ensure_ascii=False)) + "\n").encode()
        self.private_root()
        base = self.folder(asset, language)
        base.mkdir(parents=True, exist_ok=True)
        fd = os.open(base / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):  # a history an earlier Forge wrote 0644 becomes the owner's alone
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, 0o600)
            written = os.write(fd, line)
        finally:
            os.close(fd)
        if written != len(line):  # a full disk: the partial line is skipped by history(); say so
            raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes of a history event were written to {base / HISTORY}")
        return rec

    def history(self, asset: str, language: str) -> list[dict]:
        """The partition's events, oldest first; lines that are not a JSON object are skipped."""
        path = self.folder(asset, language) / HISTORY
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        events = []
        for line in text.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                events.append(ev)
        return events

    def rolled_back(self, asset: str, language: str) -> set[str]:
        """Versions a rollback moved away from (`rollback` events' `from`), less those a later rollback chose again.

        A stage that re-promotes automatically (the same inputs give the same version) must not bring these back.
        """
        gone: set[str] = set()
        for ev in self.history(asset, language):
            if ev.get("event") != ROLLBACK:
                continue
            if isinstance(ev.get("version"), str):
                gone.discard(ev["version"])
            if isinstance(ev.get("from"), str) and ev["from"] != ev.get("version"):
                gone.add(ev["from"])
        return gone

    def _point(self, base: Path, name: str, version: str) -> None:
        self.private_root()
        tmp_link = base / f".{name}-{os.getpid()}-{time.monotonic_ns()}"
        os.symlink(version, tmp_link)
        os.replace(tmp_link, base / name)  # a symlink, not a file's bytes; .<pointer>-<pid>- lets remove_stale clean it
        if name == PROMOTED:
            with contextlib.suppress(FileNotFoundError):
                (base / LEGACY_LATEST).unlink()
        if self.mirror is not None:
            self.mirror.put_text(f"{base.parent.name}/{base.name}/{name}", version)

    @staticmethod
    def remove_stale(base: Path) -> list[str]:
        """Remove temp folders and pointer links left by processes that no longer run (killed mid-write)."""
        removed = []
        if not base.is_dir():
            return removed
        for p in base.iterdir():
            if not p.name.startswith("."):
                continue
            pid = _writer_pid(p.name)
            if pid is None or pid_alive(pid):
                continue
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        return removed

    # -- garbage collection ------------------------------------------------------------------------

    def gc(self, keep: int, protect: Iterable[tuple[str, str, str]] = (), dry_run: bool = False) -> list[Artifact]:
        """Remove old versions: each partition keeps its `keep` newest, its candidate and promoted versions,
        every version in `protect` (asset, language, version) such as what is deployed, and every version a
        kept one names as an input in its manifest (an adapter's base model, a GGUF's adapter).
        """
        if keep < 0:
            raise ValueError("keep must be 0 or more")
        kept: set[tuple[str, str, str]] = set(protect)
        everything: list[Artifact] = []
        for asset, language in self.partitions():
            versions = self.versions(asset, language)
            everything += versions
            kept |= {(asset, language, a.version) for a in versions[len(versions) - keep:]} if keep else set()
            for name in POINTERS:
                if (art := self._pointer(asset, language, name)) is not None:
                    kept.add((asset, language, art.version))
        by_key = {(a.asset, a.language, a.version): a for a in everything}
        todo = [k for k in kept if k in by_key]
        while todo:  # keep the inputs of what is kept, transitively
            asset, language, version = todo.pop()
            for dep in _manifest_inputs(by_key[(asset, language, version)], language):
                if dep in by_key and dep not in kept:
                    kept.add(dep)
                    todo.append(dep)
        removed = [a for k, a in sorted(by_key.items()) if k not in kept]
        if not dry_run:
            for art in removed:
                shutil.rmtree(art.path, ignore_errors=True)
        for asset, language in list(self.partitions()):
            self.remove_stale(self.folder(asset, language))
        self.remove_stale(self.root / ".work")
        return removed


def _writer_pid(name: str) -> int | None:
    """The pid in a temp name `.tmp-<pid>-...` or `.<pointer>-<pid>-...`, else None."""
    parts = name[1:].split("-")
    if len(parts) >= 2 and parts[1].isdigit() and (parts[0] in ("tmp",) + POINTERS):
        return int(parts[1])
    return None


def _manifest_inputs(art: Artifact, language: str) -> list[tuple[str, str, str]]:
    """(asset, language, version) of each input a manifest names; base_model lives in partition `all`."""
    try:
        inputs = art.manifest().get("inputs", {}) or {}
    except (OSError, ValueError):
        return []
    return [(asset, "all" if asset == "base_model" else language, v) for asset, v in inputs.items() if isinstance(v, str)]


class PendingArtifact:
    """A version being written: `.path` to fill; `.artifact` once it is stored."""

    def __init__(self, path: Path):
        self.path = path
        self.artifact: Artifact | None = None
