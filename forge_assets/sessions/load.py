"""`load_sources`: read every configured session source into one de-duplicated LoadResult."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from forge_assets.config import SessionSource

from .claude_code import read_claude_code
from .model import LoadResult, Session, SessionSourceError
from .opencode import read_opencode

# When the same session id is read twice, the database's copy wins over the JSON tree's.
_PRIORITY = {"opencode-sqlite": 0, "opencode-json": 1, "claude-code": 2}


def _as_source(src: SessionSource | Mapping[str, Any]) -> SessionSource:
    return src if isinstance(src, SessionSource) else SessionSource.model_validate(dict(src))


def resolve_path(path: str, base_dir: Path | str) -> Path:
    """A path as written in forge.yaml, with ~ expanded and relative paths taken from base_dir."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(base_dir) / p


def merge_sessions(sessions: Iterable[Session]) -> list[Session]:
    """Sessions de-duplicated by id; messages and parts too. The database's copy of anything wins."""
    ordered = sorted(enumerate(sessions), key=lambda iv: (_PRIORITY.get(iv[1].kind, 9), iv[0]))
    merged: dict[str, Session] = {}
    for _, s in ordered:
        base = merged.get(s.id)
        if base is None:
            merged[s.id] = s
            continue
        known = {m.id: m for m in base.messages}
        for m in s.messages:
            if m.id not in known:
                base.messages.append(m)
                known[m.id] = m
                continue
            kept = known[m.id]
            have = {p.get("id") for p in kept.parts}
            extra = [p for p in m.parts if p.get("id") not in have]
            if extra:
                kept.parts.extend(extra)
                if all(p.get("id") for p in kept.parts):  # opencode ids sort in creation order
                    kept.parts.sort(key=lambda p: str(p["id"]))
        base.messages.sort(key=lambda m: (m.time_created, m.id))
        base.parent_id = base.parent_id or s.parent_id
        base.title = base.title or s.title
        base.directory = base.directory or s.directory
    return sorted(merged.values(), key=lambda s: (s.time_created, s.id))


def load_sources(sources: Iterable[SessionSource | Mapping[str, Any]], base_dir: Path | str) -> LoadResult:
    """Read every configured source. A failing source raises SessionSourceError, or with
    `on_error: skip` is recorded in `.skipped` while the others are still read."""
    result = LoadResult()
    found: list[Session] = []
    for raw in sources:
        src = _as_source(raw)
        written = src.opencode or src.claude_code or ""
        try:
            path = resolve_path(written, base_dir)
            try:
                sessions, warnings = read_opencode(path) if src.opencode else read_claude_code(path)
            except OSError as exc:
                raise SessionSourceError(f"{path}: cannot be read ({exc.strerror or exc}). Fix: check the path and its permissions.") from None
        except SessionSourceError as err:
            if src.on_error == "skip":
                result.skipped.append({"source": written, "error": str(err)})
                result.warnings.append(f"session source {written!r} skipped: {err}")
                continue
            raise
        result.warnings.extend(warnings)
        for s in sessions:
            result.agents_by_source.setdefault(s.source, src.agents)
        found.extend(sessions)
    result.sessions = merge_sessions(found)
    return result
