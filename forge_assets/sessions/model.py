"""The one shape every session log is read into, whatever tool or storage generation wrote it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class SessionSourceError(RuntimeError):
    """A configured session source cannot be read; the message names the file, the problem and the fix."""


@dataclass
class Message:
    """One message of a session: a user prompt or one assistant step, with its parts.

    `parts` are dicts shaped like opencode part data: `{...data, "id", "type"}`; a tool part is
    `{"type": "tool", "tool": name, "callID": ..., "state": {"status", "input", "output"?, "error"?}}`.
    """

    id: str
    role: str  # "user" | "assistant"
    agent: str | None
    time_created: int  # epoch milliseconds
    completed: bool
    error: str | None
    parts: list[dict[str, Any]] = field(default_factory=list)
    parent_id: str | None = None  # for an assistant step: the user message it answers
    summary: bool = False  # a compaction summary written by the agent, not a real answer


@dataclass
class Session:
    """One agent session (a conversation), with its messages in order."""

    id: str
    parent_id: str | None
    title: str
    directory: str | None
    agent: str | None
    time_created: int  # epoch milliseconds
    source: str  # the file or folder it was read from
    messages: list[Message] = field(default_factory=list)
    kind: str = "opencode"  # "opencode-sqlite" | "opencode-json" | "claude-code"


@dataclass
class LoadResult:
    """Everything read from the configured session sources."""

    sessions: list[Session] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"source", "error"}
    warnings: list[str] = field(default_factory=list)
    # Per source (Session.source) the `agents` filter its forge.yaml entry sets, if any.
    agents_by_source: dict[str, list[str] | None] = field(default_factory=dict)
    # Derived data computed once and reused across languages (e.g. classifications).
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def to_ms(value: Any) -> int | None:
    """Epoch milliseconds from an opencode/Claude timestamp: ms or s integers, or an ISO-8601 string."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        # Seconds would put the date in 1970; anything below 1e11 is taken as seconds.
        return int(value * 1000) if value < 1e11 else int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return to_ms(float(text))
        except ValueError:
            pass
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return None
    return None


def error_text(error: Any) -> str | None:
    """A readable message for an opencode/Claude error value (a string or `{name, data:{message}}`)."""
    if error in (None, "", {}, False):
        return None
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
        for key in ("message", "name", "type"):
            if error.get(key):
                return str(error[key])
        return "error"
    return str(error)
