"""Reader for Claude Code transcripts: `~/.claude/projects/<project>/<session>.jsonl`.

Each line is one event. Main-thread `user`/`assistant` events become a Session; subagent
(`isSidechain`) events become child sessions whose parent is the main session: they live in the
same file (older versions), in `<project>/agent-<id>.jsonl`, or in
`<project>/<session>/subagents/agent-<id>.jsonl` (newer, with an `agent-<id>.meta.json` naming the
agent type). Claude's tool names and snake_case inputs are mapped to opencode's (Edit →
edit{filePath, oldString, newString}, …) so both tools' sessions train the same tool vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .model import Message, Session, SessionSourceError, to_ms

TOOL_NAMES: dict[str, str] = {
    "Read": "read", "Write": "write", "Edit": "edit", "MultiEdit": "multiedit", "Bash": "bash",
    "Glob": "glob", "Grep": "grep", "LS": "list", "Task": "task", "Agent": "task", "TodoWrite": "todowrite",
    "TodoRead": "todoread", "WebFetch": "webfetch", "WebSearch": "websearch", "NotebookEdit": "notebookedit",
    "NotebookRead": "read",
}
INPUT_KEYS: dict[str, str] = {
    "file_path": "filePath", "notebook_path": "filePath", "old_string": "oldString",
    "new_string": "newString", "replace_all": "replaceAll", "new_source": "newSource",
}
_INTERRUPTED = "[Request interrupted by user"
# User-event text Claude Code injects itself (slash-command echoes, caveats), not typed prompts.
_INJECTED_PREFIXES = ("<command-name>", "<command-message>", "<local-command-stdout>", "<local-command-stderr>",
                      "Caveat: The messages below", "<system-reminder>", "<user-prompt-submit-hook>")


def _map_input(value: Any) -> Any:
    """Claude tool input with its snake_case keys renamed to opencode's, recursively (MultiEdit edits)."""
    if isinstance(value, dict):
        return {INPUT_KEYS.get(k, k): _map_input(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_input(v) for v in value]
    return value


def _result_text(content: Any) -> str:
    """A tool_result's content as text (a string, or a list of text/image blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(path.rglob("*.jsonl"))


def _read_events(path: Path, bad: list[str]) -> list[dict[str, Any]]:
    events = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        bad.append(f"{path}: cannot be read ({exc.strerror or exc})")
        return []
    broken = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            broken += 1
            continue
        if isinstance(ev, dict):
            events.append(ev)
    if broken:
        bad.append(f"{path}: {broken} line(s) are not JSON and were skipped")
    return events


def _agent_meta(path: Path) -> str | None:
    """The subagent type from an `agent-<id>.meta.json` beside a subagent transcript, if any."""
    meta = path.with_name(path.stem + ".meta.json")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("agentType") if isinstance(data, dict) else None


class _Builder:
    """Folds one thread of events (main or one subagent) into Messages."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.messages: list[Message] = []
        self.tools: dict[str, dict[str, Any]] = {}
        self.last_user: str | None = None
        self.title: str | None = None  # the first prompt's first line
        self.summary: str | None = None  # Claude Code's own summary line, preferred as the title
        self.cwd: str | None = None
        self.first_time: int | None = None
        self.task_prompts: dict[str, str] = {}  # Task prompt text → subagent type, for naming sidechains

    def add(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "summary" and ev.get("summary"):
            self.summary = self.summary or str(ev["summary"])
            return
        if kind not in ("user", "assistant") or not isinstance(ev.get("message"), dict):
            return
        when = to_ms(ev.get("timestamp")) or 0
        self.first_time = self.first_time or when
        self.cwd = self.cwd or ev.get("cwd")
        msg = ev["message"]
        content = msg.get("content")
        if kind == "assistant":
            self._assistant(ev, msg, content, when)
        else:
            self._user(ev, content, when)

    def _assistant(self, ev: dict[str, Any], msg: dict[str, Any], content: Any, when: int) -> None:
        mid = str(msg.get("id") or ev.get("uuid") or f"a{len(self.messages)}")
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant" or last.id != mid:
            # One API message is written as several lines (one per block) sharing message.id.
            last = Message(id=mid, role="assistant", agent=self.agent, time_created=when, completed=True, error=None,
                           parent_id=self.last_user)
            self.messages.append(last)
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            pid = f"{mid}:{len(last.parts)}"
            btype = block.get("type")
            if btype == "text":
                last.parts.append({"id": pid, "type": "text", "text": str(block.get("text") or "")})
            elif btype == "thinking":
                last.parts.append({"id": pid, "type": "reasoning", "text": str(block.get("thinking") or "")})
            elif btype == "tool_use":
                name = str(block.get("name") or "")
                tool_input = _map_input(block.get("input") or {})
                part = {"id": pid, "type": "tool", "tool": TOOL_NAMES.get(name, name.lower()), "callID": block.get("id") or pid,
                        "state": {"status": "running", "input": tool_input}, "originalTool": name}
                last.parts.append(part)
                self.tools[str(part["callID"])] = part
                if name in ("Task", "Agent") and isinstance(tool_input, dict) and tool_input.get("prompt"):
                    self.task_prompts[str(tool_input["prompt"]).strip()] = str(tool_input.get("subagent_type") or "general")
        if ev.get("isApiErrorMessage") or ev.get("error"):
            last.error, last.completed = str(ev.get("error") or "api error"), False

    def _user(self, ev: dict[str, Any], content: Any, when: int) -> None:
        blocks = content if isinstance(content, list) else []
        results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        for b in results:
            part = self.tools.get(str(b.get("tool_use_id")))
            if part is None:
                continue
            text = _result_text(b.get("content"))
            if b.get("is_error"):
                part["state"] = {"status": "error", "input": part["state"]["input"], "error": text}
            else:
                part["state"] = {"status": "completed", "input": part["state"]["input"], "output": text}
        texts = [content] if isinstance(content, str) else [
            str(b.get("text") or "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
        text = "\n".join(t for t in texts if t)
        if results and not text:
            return
        if text.startswith(_INTERRUPTED):
            # The user stopped the answer in progress: that assistant turn is aborted.
            for m in reversed(self.messages):
                if m.role == "user":
                    break
                m.completed, m.error = False, "aborted by the user"
            return
        if ev.get("permissionMode") == "plan":
            self.agent = "plan"
        elif ev.get("permissionMode"):
            self.agent = "build" if self.agent == "plan" else self.agent
        mid = str(ev.get("uuid") or f"u{len(self.messages)}")
        synthetic = bool(ev.get("isMeta")) or text.lstrip().startswith(_INJECTED_PREFIXES)
        if ev.get("isCompactSummary"):
            part: dict[str, Any] = {"id": f"{mid}:0", "type": "compaction", "summary": text}
        else:
            part = {"id": f"{mid}:0", "type": "text", "text": text, **({"synthetic": True} if synthetic else {})}
        self.messages.append(Message(id=mid, role="user", agent=self.agent, time_created=when, completed=True, error=None, parts=[part]))
        if not synthetic:
            self.last_user = mid
            if self.title is None and text.strip():
                self.title = text.strip().splitlines()[0][:80]


def _thread_key(ev: dict[str, Any], chain_of: dict[str, str]) -> str:
    """Which subagent thread a sidechain event belongs to: its agentId, else the chain it continues."""
    if ev.get("agentId"):
        return str(ev["agentId"])
    uuid, parent = str(ev.get("uuid") or ""), ev.get("parentUuid")
    root = chain_of.get(str(parent)) if parent else None
    root = root or uuid or f"chain{len(chain_of)}"
    if uuid:
        chain_of[uuid] = root
    return root


def read_claude_code(path: Path) -> tuple[list[Session], list[str]]:
    """Sessions (and subagent child sessions) from Claude Code transcripts under a path, and warnings."""
    if not path.exists():
        raise SessionSourceError(
            f"{path}: no such file or folder. Fix: correct the `claude_code:` path in forge.yaml "
            f"(usually ~/.claude/projects) or remove the entry."
        )
    warnings: list[str] = []
    files = _files(path)
    if not files:
        warnings.append(f"{path}: no Claude Code transcripts (*.jsonl) found.")
        return [], warnings
    bad: list[str] = []
    loaded = [(f, _read_events(f, bad)) for f in files]
    # Resumed sessions repeat earlier events (same uuid); keep each event once, oldest file first.
    loaded.sort(key=lambda fe: min((to_ms(e.get("timestamp")) or 0 for e in fe[1]), default=0))
    seen: set[str] = set()
    main: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    subs: dict[tuple[str, str], tuple[Path, list[dict[str, Any]]]] = {}
    for f, events in loaded:
        chain_of: dict[str, str] = {}
        for ev in events:
            uuid = ev.get("uuid")
            if uuid:
                if uuid in seen:
                    continue
                seen.add(uuid)
            sid = str(ev.get("sessionId") or f.stem)
            if ev.get("isSidechain"):
                subs.setdefault((sid, _thread_key(ev, chain_of)), (f, []))[1].append(ev)
            elif ev.get("type") in ("user", "assistant", "summary"):
                main.setdefault(sid, (f, []))[1].append(ev)
    sessions: list[Session] = []
    task_types: dict[str, str] = {}
    for sid, (f, events) in main.items():
        b = _Builder("build")
        for ev in events:
            b.add(ev)
        task_types.update(b.task_prompts)
        if b.messages:
            sessions.append(Session(id=sid, parent_id=None, title=b.summary or b.title or "", directory=b.cwd, agent="build",
                                    time_created=b.first_time or 0, source=str(f), messages=b.messages, kind="claude-code"))
    for (sid, thread), (f, events) in subs.items():
        b = _Builder(_agent_meta(f) or "general")
        for ev in events:
            b.add(ev)
        if not b.messages:
            continue
        first_prompt = next((p.get("text", "") for m in b.messages if m.role == "user" for p in m.parts if p.get("type") == "text"), "")
        agent = _agent_meta(f) or task_types.get(first_prompt.strip()) or "general"
        for m in b.messages:
            m.agent = agent
        sessions.append(Session(id=f"{sid}/agent-{thread}", parent_id=sid, title=b.summary or b.title or "", directory=b.cwd, agent=agent,
                                time_created=b.first_time or 0, source=str(f), messages=b.messages, kind="claude-code"))
    warnings += bad
    return sessions, warnings

