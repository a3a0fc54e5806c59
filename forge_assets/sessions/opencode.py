"""Readers for opencode's session storage: the SQLite database (v1 and 2.x tables) and the JSON trees.

Every generation is normalised to `Session`/`Message` with opencode-v1-shaped part dicts.

Read-only policy: the database is opened with `mode=ro&immutable=1`, so SQLite takes no locks and
creates no -wal/-shm file beside the user's database. `immutable` also means SQLite ignores a
-wal file, whose frames hold the most recent (not yet checkpointed) sessions; so when a non-empty
-wal file exists the database and its -wal are copied into a private temporary folder and the copy
is opened instead, which replays the WAL there and writes nothing next to the original.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .model import Message, Session, SessionSourceError, error_text, to_ms

SQLITE_MAGIC = b"SQLite format 3\x00"
_FIX_PATH = "Fix: point `opencode:` in forge.yaml at opencode.db (see `opencode db path`) or at the storage/ folder."


# ---------------------------------------------------------------------------------------------
# SQLite


def is_sqlite(path: Path) -> bool:
    """Whether a file starts with the SQLite 3 header."""
    try:
        with path.open("rb") as fh:
            return fh.read(16) == SQLITE_MAGIC
    except OSError:
        return False


@contextmanager
def open_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an SQLite file that never writes beside it (see the module docstring)."""
    try:
        with path.open("rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise SessionSourceError(f"{path}: cannot be read ({exc.strerror or exc}). Fix: check the path and its permissions.") from None
    if not header.startswith(SQLITE_MAGIC):
        raise SessionSourceError(
            f"{path}: not an SQLite database (the file does not start with the SQLite header; it may be corrupt or another kind of file). {_FIX_PATH}"
        )
    wal = path.with_name(path.name + "-wal")
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if wal.is_file() and wal.stat().st_size > 0:
            # Un-checkpointed WAL: replay it on a private copy so recent sessions are not missed.
            tmp = tempfile.TemporaryDirectory(prefix="forge-sessions-")
            copy = Path(tmp.name) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            conn = sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except (OSError, sqlite3.Error) as exc:
        if tmp is not None:
            tmp.cleanup()
        raise _db_error(path, exc) from None
    try:
        yield conn
    finally:
        conn.close()
        if tmp is not None:
            tmp.cleanup()


def _db_error(path: Path, exc: BaseException) -> SessionSourceError:
    """A SessionSourceError that says what an sqlite3/OS error means for this file and what to do."""
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        what, fix = "is locked by another process", "close opencode (or wait for it to finish writing) and run again"
    elif "malformed" in low or "not a database" in low or "corrupt" in low:
        what, fix = "is corrupt", "restore it from a backup, or remove this entry from forge.yaml (or set `on_error: skip`)"
    elif "unable to open" in low or isinstance(exc, OSError):
        what, fix = "cannot be opened", "check the path and its permissions"
    else:
        what, fix = "cannot be read", "check that it is an opencode database, or set `on_error: skip` to go on without it"
    return SessionSourceError(f"{path}: the database {what} (sqlite: {text}). Fix: {fix}.")


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """The column names of a table, or [] when the table does not exist."""
    return [row[1] for row in conn.execute(f"PRAGMA table_info('{table}')")]


def _json(text: Any) -> Any:
    """A JSON column's value decoded, or None when it is empty or not JSON."""
    if text is None or isinstance(text, (dict, list)):
        return text
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _select(conn: sqlite3.Connection, table: str, wanted: list[str], have: list[str], order: str = "") -> Iterator[dict[str, Any]]:
    """Rows of a table as dicts holding only the wanted columns that exist (missing ones are None)."""
    cols = [c for c in wanted if c in have]
    order_cols = [c.strip() for c in order.split(",") if c.strip() in have]
    sql = f"SELECT {', '.join(cols)} FROM {table}" + (f" ORDER BY {', '.join(order_cols)}" if order_cols else "")
    for row in conn.execute(sql):
        rec = dict.fromkeys(wanted)
        rec.update(zip(cols, row))
        yield rec


def read_db(path: Path) -> list[Session]:
    """Every session in an opencode SQLite database (v1 message/part tables and 2.x session_message)."""
    with open_readonly(path) as conn:
        try:
            return _read_db(conn, path)
        except SessionSourceError:
            raise
        except sqlite3.Error as exc:
            raise _db_error(path, exc) from None


def _read_db(conn: sqlite3.Connection, path: Path) -> list[Session]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    has_v1 = {"session", "message", "part"} <= tables
    has_v2 = "session_message" in tables and ("session" in tables or "session_v2" in tables)
    if not (has_v1 or has_v2):
        found = ", ".join(sorted(tables)) or "no tables"
        raise SessionSourceError(
            f"{path}: an SQLite database but not an opencode one Forge knows (expected tables session, message, part or session_message; found {found}). "
            f"Fix: point `opencode:` at opencode's own opencode.db; if opencode changed its schema, report it and set `on_error: skip` meanwhile."
        )
    worktrees: dict[str, str] = {}
    pcols = _columns(conn, "project")
    if "worktree" in pcols:
        worktrees = {pid: wt for pid, wt in conn.execute("SELECT id, worktree FROM project") if wt}

    sessions: dict[str, Session] = {}
    wanted = ["id", "project_id", "parent_id", "title", "directory", "path", "agent", "time_created"]
    for table in ("session", "session_v2"):
        cols = _columns(conn, table)
        if "id" not in cols:
            continue
        for row in _select(conn, table, wanted, cols, "time_created, id"):
            if row["id"] in sessions:
                continue
            directory = row["directory"] or worktrees.get(row["project_id"] or "") or row["path"]
            sessions[row["id"]] = Session(
                id=row["id"], parent_id=row["parent_id"] or None, title=row["title"] or "",
                directory=directory, agent=_agent_name(row["agent"]), time_created=to_ms(row["time_created"]) or 0,
                source=str(path), kind="opencode-sqlite",
            )

    v1_sessions: set[str] = set()
    if has_v1:
        mcols, ptcols = _columns(conn, "message"), _columns(conn, "part")
        parts_by_msg: dict[str, list[dict[str, Any]]] = {}
        for row in _select(conn, "part", ["id", "message_id", "data"], ptcols, "message_id, id"):
            data = _json(row["data"])
            if isinstance(data, dict):
                parts_by_msg.setdefault(row["message_id"], []).append(normalise_part(data, row["id"]))
        for row in _select(conn, "message", ["id", "session_id", "time_created", "data"], mcols, "session_id, time_created, id"):
            data = _json(row["data"])
            if not isinstance(data, dict):
                continue
            session = sessions.get(row["session_id"]) or sessions.setdefault(row["session_id"], _orphan(row["session_id"], path))
            session.messages.append(v1_message(row["id"], data, parts_by_msg.get(row["id"], []), row["time_created"]))
            v1_sessions.add(session.id)
    if "session_message" in tables:
        scols = _columns(conn, "session_message")
        for row in _select(conn, "session_message", ["id", "session_id", "type", "seq", "time_created", "data"], scols, "session_id, seq, time_created, id"):
            # A session written by both generations is read from the v1 tables only, so turns are not doubled.
            if row["session_id"] in v1_sessions:
                continue
            data = _json(row["data"])
            if not isinstance(data, dict):
                continue
            msg = v2_message(row["id"], row["type"] or data.get("type") or "", data, row["time_created"])
            if msg is not None:
                session = sessions.get(row["session_id"]) or sessions.setdefault(row["session_id"], _orphan(row["session_id"], path))
                session.messages.append(msg)
    out = list(sessions.values())
    for s in out:
        _finish(s)
    return out


def _orphan(session_id: str, path: Path) -> Session:
    """A session known only from its messages (its own row is missing)."""
    return Session(id=session_id, parent_id=None, title="", directory=None, agent=None, time_created=0, source=str(path), kind="opencode-sqlite")


def _agent_name(value: Any) -> str | None:
    """An agent name from a session's `agent` column (plain text, or JSON holding a name)."""
    data = _json(value) if isinstance(value, str) and value.startswith("{") else value
    if isinstance(data, dict):
        data = data.get("name") or data.get("id")
    return str(data) if data else None


def _finish(session: Session) -> None:
    """Order a session's messages and fill what only its messages tell (start time, agent)."""
    session.messages.sort(key=lambda m: (m.time_created, m.id))
    if session.messages and not session.time_created:
        session.time_created = session.messages[0].time_created
    if session.agent is None:
        session.agent = next((m.agent for m in session.messages if m.agent), None)


# ---------------------------------------------------------------------------------------------
# Normalising messages and parts


def normalise_part(data: dict[str, Any], part_id: str | None = None) -> dict[str, Any]:
    """A v1 part as `{...data, id, type}`; the pre-1.0 AI-SDK `tool-invocation` shape becomes a tool part."""
    part = dict(data)
    part["id"] = part_id or str(data.get("id") or "")
    part["type"] = str(data.get("type") or "unknown")
    if part["type"] == "tool-invocation" and isinstance(data.get("toolInvocation"), dict):
        inv = data["toolInvocation"]
        done = inv.get("state") == "result"
        part.update(type="tool", tool=inv.get("toolName"), callID=inv.get("toolCallId"),
                    state={"status": "completed" if done else "pending", "input": inv.get("args") or {},
                           "output": _text_of(inv.get("result")) if done else None})
    return part


def v1_message(message_id: str, data: dict[str, Any], parts: list[dict[str, Any]], row_time: Any = None) -> Message:
    """A v1 (MessageV2) message from its data and its normalised parts."""
    time = data.get("time") if isinstance(data.get("time"), dict) else {}
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    if not time and isinstance(meta.get("time"), dict):  # pre-1.0 messages keep time in metadata
        time = meta["time"]
    role = str(data.get("role") or "user")
    error = error_text(data.get("error") or meta.get("error"))
    completed = role != "assistant" or (to_ms(time.get("completed")) is not None and error is None)
    if not parts and isinstance(data.get("parts"), list):  # pre-1.0 messages hold their parts inline
        parts = [normalise_part(p, f"{message_id}:{i}") for i, p in enumerate(data["parts"]) if isinstance(p, dict)]
    agent = data.get("agent") or data.get("mode")
    return Message(
        id=message_id, role=role, agent=str(agent) if agent else None,
        time_created=to_ms(time.get("created")) or to_ms(row_time) or 0, completed=completed, error=error,
        parts=sorted(parts, key=lambda p: p["id"]) if all(p.get("id") for p in parts) else parts,
        parent_id=data.get("parentID"), summary=role == "assistant" and data.get("summary") is True,
    )


def _text_of(value: Any) -> str:
    """Tool output as text: strings as they are, `[{type:'text', text}]` lists joined, else JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [v.get("text", "") for v in value if isinstance(v, dict) and v.get("type") == "text"]
        if texts or not value:
            return "\n".join(texts)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def v2_tool_part(entry: dict[str, Any], part_id: str) -> dict[str, Any]:
    """A 2.x assistant `tool` content entry as a v1 tool part `{type:'tool', tool, callID, state}`."""
    state = entry.get("state") if isinstance(entry.get("state"), dict) else {}
    raw_input = state.get("input")
    if isinstance(raw_input, str):  # pending tools still hold the streamed JSON text
        raw_input = _json(raw_input) if raw_input.strip() else {}
    output = state["output"] if "output" in state else state.get("content")
    new_state: dict[str, Any] = {"status": state.get("status") or "pending", "input": raw_input if isinstance(raw_input, dict) else {}}
    if new_state["status"] == "completed":
        new_state["output"] = _text_of(output)
    if state.get("error") is not None:
        new_state["error"] = error_text(state["error"])
    if isinstance(state.get("metadata"), dict):
        new_state["metadata"] = state["metadata"]
    return {"id": part_id, "type": "tool", "tool": entry.get("name") or entry.get("tool"),
            "callID": entry.get("id") or entry.get("callID") or part_id, "state": new_state}


def v2_message(row_id: str, kind: str, data: dict[str, Any], row_time: Any = None) -> Message | None:
    """A 2.x `session_message` row as a Message; None for bookkeeping rows (agent/model switches)."""
    time = data.get("time") if isinstance(data.get("time"), dict) else {}
    created = to_ms(time.get("created")) or to_ms(row_time) or 0
    if kind == "user":
        parts: list[dict[str, Any]] = []
        if isinstance(data.get("content"), list):
            parts = [dict(c, id=f"{row_id}:{i}", type=c.get("type") or "text") for i, c in enumerate(data["content"]) if isinstance(c, dict)]
        elif data.get("text") is not None:
            parts.append({"id": f"{row_id}:0", "type": "text", "text": str(data["text"])})
        for i, f in enumerate(data.get("files") or []):
            if isinstance(f, dict):
                parts.append(dict(f, id=f"{row_id}:f{i}", type="file"))
        for i, a in enumerate(data.get("agents") or []):
            parts.append({"id": f"{row_id}:a{i}", "type": "agent", "name": a.get("name") if isinstance(a, dict) else a})
        return Message(id=row_id, role="user", agent=data.get("agent"), time_created=created, completed=True, error=None, parts=parts)
    if kind == "synthetic":
        return Message(id=row_id, role="user", agent=None, time_created=created, completed=True, error=None,
                       parts=[{"id": f"{row_id}:0", "type": "text", "text": str(data.get("text") or ""), "synthetic": True}])
    if kind == "compaction":
        return Message(id=row_id, role="assistant", agent="compaction", time_created=created, completed=True, error=None,
                       parts=[{**data, "id": f"{row_id}:0", "type": "compaction"}], summary=True)
    if kind == "shell":
        # A command the user ran with `!`: kept as a bash tool part for classification, never as a turn.
        state = {"status": "completed" if time.get("completed") else "running", "input": {"command": data.get("command") or ""},
                 "output": str(data.get("output") or "")}
        return Message(id=row_id, role="user", agent=None, time_created=created, completed=True, error=None,
                       parts=[{"id": f"{row_id}:0", "type": "tool", "tool": "bash", "callID": data.get("callID") or row_id, "state": state, "shell": True}])
    if kind == "assistant":
        parts = []
        for i, c in enumerate(data.get("content") or []):
            if not isinstance(c, dict):
                continue
            pid = f"{row_id}:{i}"
            if c.get("type") == "tool":
                parts.append(v2_tool_part(c, pid))
            else:
                parts.append({**c, "id": pid, "type": c.get("type") or "text"})
        error = error_text(data.get("error")) or ("error" if data.get("finish") == "error" else None)
        return Message(
            id=row_id, role="assistant", agent=data.get("agent") or data.get("mode"), time_created=created,
            completed=to_ms(time.get("completed")) is not None and error is None, error=error, parts=parts,
            parent_id=data.get("parentID"),
        )
    return None


# ---------------------------------------------------------------------------------------------
# JSON storage trees


class _JsonReader:
    """Reads JSON files, counting the unreadable ones instead of failing on them."""

    def __init__(self) -> None:
        self.bad: list[Path] = []

    def load(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.bad.append(path)
            return None
        if not isinstance(data, dict):
            self.bad.append(path)
            return None
        return data


def _session_from_info(info: dict[str, Any], fallback_id: str, source: Path) -> Session:
    time = info.get("time") if isinstance(info.get("time"), dict) else {}
    return Session(
        id=str(info.get("id") or fallback_id), parent_id=info.get("parentID") or None, title=str(info.get("title") or ""),
        directory=info.get("directory"), agent=None, time_created=to_ms(time.get("created")) or 0,
        source=str(source), kind="opencode-json",
    )


def _read_tree(root: Path, session_files: list[Path], message_dir: Path, part_dir_of: Any) -> tuple[list[Session], list[Path]]:
    """Sessions of one JSON tree; `part_dir_of(session_id, message_id)` names a message's part folder."""
    reader = _JsonReader()
    sessions: dict[str, Session] = {}
    for f in session_files:
        info = reader.load(f)
        if info is not None:
            s = _session_from_info(info, f.stem, root)
            sessions.setdefault(s.id, s)
    if message_dir.is_dir():
        for sdir in sorted(p for p in message_dir.iterdir() if p.is_dir()):
            session = sessions.get(sdir.name)
            if session is None:
                session = sessions.setdefault(sdir.name, _session_from_info({}, sdir.name, root))
            for mf in sorted(sdir.glob("*.json")):
                data = reader.load(mf)
                if data is None:
                    continue
                mid = str(data.get("id") or mf.stem)
                pdir = part_dir_of(session.id, mid)
                parts = []
                if pdir.is_dir():
                    for pf in sorted(pdir.glob("*.json")):
                        pdata = reader.load(pf)
                        if pdata is not None:
                            parts.append(normalise_part(pdata, str(pdata.get("id") or pf.stem)))
                session.messages.append(v1_message(mid, data, parts))
    out = list(sessions.values())
    for s in out:
        _finish(s)
    return out, reader.bad


def read_storage(storage: Path) -> tuple[list[Session], list[str]]:
    """Sessions of a JSON `storage/` folder, in either layout, and warnings about unreadable files."""
    warnings: list[str] = []
    if (storage / "session" / "info").is_dir():
        # Before Aug 2025: storage/session/{info/<sid>.json, message/<sid>/<mid>.json, part/<sid>/<mid>/<pid>.json}
        base = storage / "session"
        sessions, bad = _read_tree(storage, sorted((base / "info").glob("*.json")), base / "message",
                                   lambda sid, mid: base / "part" / sid / mid)
    else:
        # Before 1.2: storage/session/<projectID>/<sid>.json, storage/message/<sid>/…, storage/part/<mid>/…
        files = sorted((storage / "session").glob("*/*.json")) + sorted((storage / "session").glob("*.json"))
        sessions, bad = _read_tree(storage, files, storage / "message", lambda sid, mid: storage / "part" / mid)
    if bad:
        shown = ", ".join(str(p) for p in bad[:3]) + (" …" if len(bad) > 3 else "")
        warnings.append(f"{storage}: skipped {len(bad)} unreadable JSON file(s) ({shown}).")
    return sessions, warnings


def _looks_like_storage(path: Path) -> bool:
    return (path / "session").is_dir() or (path / "message").is_dir()


def read_opencode(path: Path) -> tuple[list[Session], list[str]]:
    """Sessions under an `opencode:` path: an opencode.db, a storage/ folder, or a folder holding them.

    Returns every session found (database sessions first; the caller de-duplicates by id) and warnings.
    """
    if not path.exists():
        raise SessionSourceError(
            f"{path}: no such file or folder. Fix: correct the `opencode:` path in forge.yaml "
            f"(usually ~/.local/share/opencode/opencode.db or ~/.local/share/opencode/storage) or remove the entry."
        )
    if path.is_file():
        return read_db(path), []
    sessions: list[Session] = []
    warnings: list[str] = []
    found = False
    for db in sorted(path.glob("opencode*.db")):
        found = True
        sessions += read_db(db)
    storages: list[Path] = []
    if _looks_like_storage(path):
        storages.append(path)
    if (path / "storage").is_dir():
        storages.append(path / "storage")
    if (path / "project").is_dir():
        storages += sorted(p / "storage" for p in (path / "project").iterdir() if (p / "storage" / "session").is_dir())
    for storage in storages:
        found = True
        got, warns = read_storage(storage)
        sessions += got
        warnings += warns
    if not found:
        raise SessionSourceError(
            f"{path}: a folder with no opencode.db, storage/ or project/ data in it. {_FIX_PATH}"
        )
    return sessions, warnings
