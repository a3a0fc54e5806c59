"""Builders for session-log fixtures: opencode databases (several schema generations), JSON storage
trees in both old layouts, and Claude Code transcripts, all from one small in-memory description."""

from __future__ import annotations

import itertools
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = 1_760_000_000_000  # epoch ms, autumn 2025
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """An opencode-style id (`ses_…`, `msg_…`, `prt_…`) that sorts in creation order."""
    return f"{prefix}_{next(_ids):012d}"


# --- parts (opencode v1 part data, without id) -------------------------------------------------

def text(t: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": t, **extra}


def reasoning(t: str) -> dict[str, Any]:
    return {"type": "reasoning", "text": t, "time": {"start": T0, "end": T0 + 1}}


def tool(name: str, inp: dict[str, Any], output: str = "", status: str = "completed", error: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {"status": status, "input": inp, "time": {"start": T0, "end": T0 + 5}}
    if status == "completed":
        state.update(output=output, title=name, metadata={})
    elif status == "error":
        state["error"] = error or "tool failed"
    return {"type": "tool", "callID": new_id("call"), "tool": name, "state": state}


def bash(command: str, output: str = "", status: str = "completed") -> dict[str, Any]:
    return tool("bash", {"command": command, "description": "run"}, output, status)


def edit(path: str, old: str = "a", new: str = "b", status: str = "completed") -> dict[str, Any]:
    return tool("edit", {"filePath": path, "oldString": old, "newString": new}, "Edit applied successfully.", status)


def write(path: str, content: str = "x") -> dict[str, Any]:
    return tool("write", {"filePath": path, "content": content}, "Wrote file successfully.")


def read(path: str, output: str = "") -> dict[str, Any]:
    return tool("read", {"filePath": path}, output or f"<file>\n00001| contents of {path}\n</file>")


def apply_patch(patch_text: str) -> dict[str, Any]:
    return tool("apply_patch", {"patchText": patch_text}, "Success. Updated the following files")


def patch_part(*files: str) -> dict[str, Any]:
    return {"type": "patch", "hash": "abc123", "files": list(files)}


# --- sessions ----------------------------------------------------------------------------------

@dataclass
class Msg:
    id: str
    role: str
    data: dict[str, Any]  # message data without id/sessionID
    parts: list[dict[str, Any]]  # part data, each with its id


@dataclass
class Spec:
    """One session as opencode stores it."""

    id: str = field(default_factory=lambda: new_id("ses"))
    title: str = "a session"
    directory: str = "/home/dev/project"
    parent_id: str | None = None
    agent: str = "build"
    time: int = T0
    messages: list[Msg] = field(default_factory=list)
    _clock: int = 0

    def _now(self) -> int:
        self._clock += 1000
        return self.time + self._clock

    def user(self, prompt: str, *more: dict[str, Any], agent: str | None = None) -> "Spec":
        """A user message: the prompt as a text part, plus any extra parts (synthetic text, files…)."""
        parts = [text(prompt)] if prompt else []
        parts += list(more)
        self.messages.append(Msg(new_id("msg"), "user", {
            "role": "user", "time": {"created": self._now()}, "agent": agent or self.agent,
            "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4"}}, _with_ids(parts)))
        return self

    def assistant(self, *parts: dict[str, Any], agent: str | None = None, completed: bool = True,
                  error: str | None = None, summary: bool = False, mode_only: bool = False) -> "Spec":
        """An assistant step answering the latest user message."""
        parent = next((m.id for m in reversed(self.messages) if m.role == "user"), None)
        created = self._now()
        name = agent or self.agent
        data: dict[str, Any] = {
            "role": "assistant", "parentID": parent, "time": {"created": created},
            "modelID": "claude-sonnet-4", "providerID": "anthropic", "mode": name,
            "path": {"cwd": self.directory, "root": self.directory}, "cost": 0.01,
            "tokens": {"input": 100, "output": 50, "reasoning": 0, "cache": {"read": 0, "write": 0}},
        }
        if not mode_only:
            data["agent"] = name
        if completed:
            data["time"]["completed"] = created + 500
            data["finish"] = "tool-calls" if any(p["type"] == "tool" for p in parts) else "stop"
        if error:
            data["error"] = {"name": "MessageAbortedError", "data": {"message": error}}
        if summary:
            data["summary"] = True
        wrapped = [{"type": "step-start", "snapshot": "0" * 40}, *parts,
                   {"type": "step-finish", "reason": data.get("finish", "stop"), "cost": 0.01, "tokens": data["tokens"]}]
        self.messages.append(Msg(new_id("msg"), "assistant", data, _with_ids(wrapped)))
        return self

    def turn(self, prompt: str, *parts: dict[str, Any], answer: str = "Done.") -> "Spec":
        """A whole turn: the prompt, one step per tool call, and a final text answer."""
        self.user(prompt)
        for p in parts:
            self.assistant(p)
        if answer:
            self.assistant(text(answer))
        return self


def _with_ids(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**p, "id": new_id("prt")} for p in parts]


# --- opencode SQLite ---------------------------------------------------------------------------

PROJECT_SQL = """CREATE TABLE `project` (
  `id` text PRIMARY KEY, `worktree` text NOT NULL, `vcs` text, `name` text, `icon_url` text, `icon_color` text,
  `time_created` integer NOT NULL, `time_updated` integer NOT NULL, `time_initialized` integer, `sandboxes` text NOT NULL)"""
SESSION_SQL = """CREATE TABLE `session` (
  `id` text PRIMARY KEY, `project_id` text NOT NULL, `parent_id` text, `slug` text NOT NULL, `directory` text NOT NULL,
  `title` text NOT NULL, `version` text NOT NULL, `share_url` text, `summary_additions` integer, `summary_deletions` integer,
  `summary_files` integer, `summary_diffs` text, `revert` text, `permission` text,
  `time_created` integer NOT NULL, `time_updated` integer NOT NULL, `time_compacting` integer, `time_archived` integer,
  CONSTRAINT `fk_session_project_id_project_id_fk` FOREIGN KEY (`project_id`) REFERENCES `project`(`id`) ON DELETE CASCADE)"""
# Columns later migrations added to `session` (ALTER TABLE, so they come last as in a migrated database).
LATE_SESSION_COLUMNS = ["`workspace_id` text", "`path` text", "`agent` text", "`model` text",
                        "`cost` real DEFAULT 0 NOT NULL", "`tokens_input` integer DEFAULT 0 NOT NULL",
                        "`tokens_output` integer DEFAULT 0 NOT NULL", "`tokens_reasoning` integer DEFAULT 0 NOT NULL",
                        "`tokens_cache_read` integer DEFAULT 0 NOT NULL", "`tokens_cache_write` integer DEFAULT 0 NOT NULL",
                        "`metadata` text"]
MESSAGE_SQL = """CREATE TABLE `message` (
  `id` text PRIMARY KEY, `session_id` text NOT NULL, `time_created` integer NOT NULL, `time_updated` integer NOT NULL,
  `data` text NOT NULL,
  CONSTRAINT `fk_message_session_id_session_id_fk` FOREIGN KEY (`session_id`) REFERENCES `session`(`id`) ON DELETE CASCADE)"""
PART_SQL = """CREATE TABLE `part` (
  `id` text PRIMARY KEY, `message_id` text NOT NULL, `session_id` text NOT NULL, `time_created` integer NOT NULL,
  `time_updated` integer NOT NULL, `data` text NOT NULL,
  CONSTRAINT `fk_part_message_id_message_id_fk` FOREIGN KEY (`message_id`) REFERENCES `message`(`id`) ON DELETE CASCADE)"""
SESSION_MESSAGE_SQL = """CREATE TABLE `session_message` (
  `id` text PRIMARY KEY, `session_id` text NOT NULL, `type` text NOT NULL, `seq` integer NOT NULL,
  `time_created` integer NOT NULL, `time_updated` integer NOT NULL, `data` text NOT NULL,
  CONSTRAINT `fk_session_message_session_id_session_id_fk` FOREIGN KEY (`session_id`) REFERENCES `session`(`id`) ON DELETE CASCADE)"""
OTHER_SQL = [
    "CREATE TABLE `todo` (`session_id` text NOT NULL, `content` text NOT NULL, `status` text NOT NULL, `priority` text NOT NULL, "
    "`position` integer NOT NULL, `time_created` integer NOT NULL, `time_updated` integer NOT NULL, PRIMARY KEY(`session_id`, `position`))",
    "CREATE INDEX `message_session_idx` ON `message` (`session_id`)",
    "CREATE INDEX `part_message_idx` ON `part` (`message_id`)",
    "CREATE INDEX `session_project_idx` ON `session` (`project_id`)",
]


def create_schema(conn: sqlite3.Connection, generation: str = "late") -> None:
    """opencode's tables: `early` (1.2, no later session columns), `late` (migrated), or `v2` (+ session_message)."""
    conn.execute(PROJECT_SQL)
    conn.execute(SESSION_SQL)
    if generation in ("late", "v2"):
        for col in LATE_SESSION_COLUMNS:
            conn.execute(f"ALTER TABLE `session` ADD COLUMN {col}")
    conn.execute(MESSAGE_SQL)
    conn.execute(PART_SQL)
    for sql in OTHER_SQL:
        conn.execute(sql)
    if generation == "v2":
        conn.execute(SESSION_MESSAGE_SQL)


def _insert_session(conn: sqlite3.Connection, s: Spec, generation: str) -> None:
    conn.execute("INSERT OR IGNORE INTO project (id, worktree, vcs, time_created, time_updated, sandboxes) VALUES (?,?,?,?,?,?)",
                 ("prj_1", s.directory, "git", T0, T0, "[]"))
    cols = ["id", "project_id", "parent_id", "slug", "directory", "title", "version", "time_created", "time_updated"]
    vals: list[Any] = [s.id, "prj_1", s.parent_id, "brave-otter", s.directory, s.title, "1.2.0", s.time, s.time]
    if generation != "early":
        cols += ["agent", "model", "cost"]
        vals += [s.agent, json.dumps({"id": "claude-sonnet-4", "providerID": "anthropic"}), 0.5]
    conn.execute(f"INSERT INTO session ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)


def write_db(path: Path, specs: list[Spec], generation: str = "late", journal: str = "DELETE") -> Path:
    """An opencode.db holding the sessions in v1 message/part tables (or session_message for `v2`)."""
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    create_schema(conn, generation)
    insert(conn, specs, generation)
    conn.commit()
    conn.close()
    return path


def insert(conn: sqlite3.Connection, specs: list[Spec], generation: str = "late") -> None:
    """Insert sessions into an open opencode database (v1 tables, or session_message for `v2`)."""
    for s in specs:
        _insert_session(conn, s, generation)
        if generation == "v2":
            for seq, (kind, row_id, data) in enumerate(v2_rows(s)):
                t = data.get("time", {}).get("created", s.time)
                conn.execute("INSERT INTO session_message VALUES (?,?,?,?,?,?,?)", (row_id, s.id, kind, seq, t, t, json.dumps(data)))
            continue
        for m in s.messages:
            t = m.data["time"]["created"]
            conn.execute("INSERT INTO message VALUES (?,?,?,?,?)", (m.id, s.id, t, t, json.dumps(m.data)))
            for p in m.parts:
                data = {k: v for k, v in p.items() if k != "id"}
                conn.execute("INSERT INTO part VALUES (?,?,?,?,?,?)", (p["id"], m.id, s.id, t, t, json.dumps(data)))


def v2_rows(s: Spec) -> list[tuple[str, str, dict[str, Any]]]:
    """The session as opencode 2.x `session_message` rows: (type, id, data)."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for m in s.messages:
        created = m.data["time"]["created"]
        if m.role == "user":
            real = [p for p in m.parts if p["type"] == "text" and not p.get("synthetic")]
            for p in m.parts:
                if p["type"] == "text" and p.get("synthetic"):
                    rows.append(("synthetic", new_id("evt"), {"sessionID": s.id, "text": p["text"], "time": {"created": created}}))
            if real:
                rows.append(("user", m.id, {"text": "\n".join(p["text"] for p in real), "files": [], "agents": [], "time": {"created": created}}))
            continue
        content: list[dict[str, Any]] = []
        for p in m.parts:
            if p["type"] == "text":
                content.append({"type": "text", "text": p["text"]})
            elif p["type"] == "reasoning":
                content.append({"type": "reasoning", "id": p["id"], "text": p["text"]})
            elif p["type"] == "tool":
                st = p["state"]
                state: dict[str, Any] = {"status": st["status"], "input": st["input"], "structured": {},
                                         "content": [{"type": "text", "text": st.get("output", "")}] if st["status"] == "completed" else []}
                if st["status"] == "error":
                    state["error"] = {"type": "unknown", "message": st.get("error")}
                content.append({"type": "tool", "id": p["callID"], "name": p["tool"], "state": state, "time": {"created": created}})
        data: dict[str, Any] = {"agent": m.data.get("agent") or m.data.get("mode"), "model": {"providerID": "anthropic", "id": "claude-sonnet-4"},
                                "content": content, "time": {"created": created}}
        if m.data["time"].get("completed"):
            data["time"]["completed"] = m.data["time"]["completed"]
            data["finish"] = m.data.get("finish", "stop")
        if m.data.get("error"):
            data["finish"] = "error"
            data["error"] = {"type": "aborted", "message": m.data["error"]["data"]["message"]}
        rows.append(("assistant", m.id, data))
    return rows


# --- opencode JSON storage ---------------------------------------------------------------------

def write_storage(root: Path, specs: list[Spec], layout: str = "new") -> Path:
    """A JSON tree: `new` = storage/{session/<prj>/,message/<sid>/,part/<mid>/}; `old` = project/<dir>/storage/session/{info,message,part}.

    Returns the folder to configure (`storage/` for new, the opencode data folder for old)."""
    for s in specs:
        info = {"id": s.id, "projectID": "prj_1", "directory": s.directory, "title": s.title, "version": "0.9.0",
                "time": {"created": s.time, "updated": s.time}}
        if s.parent_id:
            info["parentID"] = s.parent_id
        if layout == "new":
            storage = root / "storage"
            _dump(storage / "session" / "prj_1" / f"{s.id}.json", info)
        else:
            storage = root / "project" / "home-dev-project" / "storage"
            _dump(storage / "session" / "info" / f"{s.id}.json", info)
        for m in s.messages:
            mdir = storage / "message" / s.id if layout == "new" else storage / "session" / "message" / s.id
            _dump(mdir / f"{m.id}.json", {"id": m.id, "sessionID": s.id, **m.data})
            for p in m.parts:
                pdir = storage / "part" / m.id if layout == "new" else storage / "session" / "part" / s.id / m.id
                _dump(pdir / f"{p['id']}.json", {**p, "sessionID": s.id, "messageID": m.id})
    return root / "storage" if layout == "new" else root


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


# --- Claude Code -------------------------------------------------------------------------------

class Claude:
    """Writes a Claude Code transcript line by line."""

    def __init__(self, session_id: str = "0b9c2a1e-5f7d-4c3b-9a8e-1d2c3b4a5f60", cwd: str = "/home/dev/app",
                 sidechain: bool = False, agent_id: str | None = None) -> None:
        self.session_id, self.cwd, self.sidechain, self.agent_id = session_id, cwd, sidechain, agent_id
        self.lines: list[dict[str, Any]] = []
        self.last_uuid: str | None = None
        self.clock = 0

    def _event(self, kind: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        self.clock += 1
        uuid = f"{self.session_id[:8]}-{'s' if self.sidechain else 'm'}{self.agent_id or ''}-{len(self.lines):04d}"
        ev = {"parentUuid": self.last_uuid, "isSidechain": self.sidechain, "userType": "external", "cwd": self.cwd,
              "sessionId": self.session_id, "version": "1.0.98", "gitBranch": "main", "type": kind, "message": message,
              "uuid": uuid, "timestamp": f"2025-10-09T10:{self.clock // 60:02d}:{self.clock % 60:02d}.000Z", **extra}
        if self.agent_id:
            ev["agentId"] = self.agent_id
        self.lines.append(ev)
        self.last_uuid = uuid
        return ev

    def user(self, content: Any, **extra: Any) -> "Claude":
        self._event("user", {"role": "user", "content": content}, **extra)
        return self

    def assistant(self, *blocks: dict[str, Any], msg_id: str | None = None, **extra: Any) -> "Claude":
        mid = msg_id or new_id("msg_01")
        for b in blocks:  # Claude Code writes one line per content block
            self._event("assistant", {"id": mid, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                                      "content": [b], "stop_reason": None, "usage": {"input_tokens": 10, "output_tokens": 5}}, **extra)
        return self

    def tool(self, name: str, inp: dict[str, Any], result: str, is_error: bool = False) -> "Claude":
        tid = new_id("toolu")
        self.assistant({"type": "tool_use", "id": tid, "name": name, "input": inp})
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tid, "content": result}
        if is_error:
            block["is_error"] = True
        self.user([block], toolUseResult={"stdout": result})
        return self

    def say(self, t: str) -> "Claude":
        return self.assistant({"type": "text", "text": t})

    def write(self, path: Path, extra_lines: list[str] = ()) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "\n".join([json.dumps(ev) for ev in self.lines] + list(extra_lines)) + "\n"
        path.write_text(body, encoding="utf-8")
        return path
