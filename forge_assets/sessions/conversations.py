"""Training records from sessions: one chat record per completed turn, one code_change per successful edit.

A turn is a user prompt and the assistant steps that answer it. A chat record holds its messages in
the OpenAI/mlx-lm form `forge_assets.chat.render_chat` renders:
`{"role": "user"|"assistant"|"tool", "content": str, "tool_calls"?: [{"type": "function",
"function": {"name", "arguments": {...}}}]}`, a tool result being `{"role": "tool", "name", "content"}`.
Each turn stands alone (earlier turns are not repeated as context). Every string written into a
record goes through `forge_assets.scrub.scrub_text` first.

Which chat records a language's partition holds is decided per exchange (a turn; see
`forge_assets.sessions.classify`). Only exchanges of sessions with at least one language label
(not `general`) are considered. An exchange with a decisive signal of its own (at least MIN_POINTS,
a language holding THRESHOLD of them, as for sessions) belongs to the languages its own weights
select, whatever its session's labels; an exchange with no signal of its own (e.g. "thanks, now
explain") inherits its session's labels. So in a session that first fixes a Rust bug and then
writes a Python script, the Rust exchange goes to `rust`, the Python one to `python`, and neither
to the other; a following "now explain" exchange goes to both if the session is labelled both.
A chat record carries its exchange's weights, `"weights": {language: float}` (3 decimals; the
session's when inherited). An exchange's code_change records go with it, each only to the
partition of its file's language. Asked for `general`, the exchanges of `general` sessions are
returned. Stats count the chat records written by own signal (`exchanges_by_own_signal`) and by
inheritance (`exchanges_inherited`); `sessions` counts the sessions with an exchange in the partition.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from forge_assets.config import SessionSource
from forge_assets.scrub import scrub_field, scrub_text

from .classify import GENERAL, INHERITED, Classification, classifications, classify_exchange, is_code_of
from .load import load_sources
from .model import LoadResult, Message, Session
from .patches import patch_hunks

# Agents that are not coding work: planning, and opencode's hidden compaction/title/summary agents.
NON_CODING_AGENTS = frozenset({"plan", "compaction", "title", "summary"})
CHANGE_TOOLS = frozenset({"edit", "write", "multiedit", "apply_patch"})

# A turn with its compaction summaries left out, and its exchange classification.
Exchange = tuple[Message, list[Message], Classification]


class _Scrubber:
    """Scrubs strings (and strings nested in tool arguments), summing redactions by secret type."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def text(self, text: str) -> str:
        clean, counts = scrub_text(text)
        self.counts.update(counts)
        return clean

    def value(self, value: Any, key: str | None = None) -> Any:
        """A tool argument: strings scrubbed, a string under a secret-named key judged with its key
        (`{"password": "hunter2"}`), dict keys scrubbed too; nested dicts and lists alike."""
        if isinstance(value, str):
            if key is None:
                return self.text(value)
            clean, counts = scrub_field(key, value)
            self.counts.update(counts)
            return clean
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v, k if isinstance(k, str) else None)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, key) for v in value]
        return value


def turns(session: Session) -> list[tuple[Message, list[Message]]]:
    """A session's turns: each user message with the assistant messages answering it, in order."""
    out: list[tuple[Message, list[Message]]] = []
    index: dict[str, int] = {}
    for m in session.messages:
        if m.role == "user":
            if _user_text(m) or any(p.get("type") == "compaction" for p in m.parts):
                index[m.id] = len(out)
                out.append((m, []))
            else:
                # Injected context (synthetic text, a `!` shell run) continues the current turn.
                index[m.id] = len(out) - 1
        elif m.role == "assistant":
            # An assistant step names the prompt it answers; else it continues the latest turn.
            at = index.get(m.parent_id or "", len(out) - 1)
            if at >= 0:
                out[at][1].append(m)
    return out


def exchanges(session: Session, classification: Classification) -> list[Exchange]:
    """A session's turns, compaction summary steps left out, each classified given the session's classification."""
    out: list[Exchange] = []
    for user, steps in turns(session):
        steps = [s for s in steps if not s.summary and s.agent != "compaction"]
        out.append((user, steps, classify_exchange([user, *steps], classification)))
    return out


def _considered(classification: Classification, language: str) -> bool:
    """Whether a session's exchanges are candidates for a language's partition."""
    if language == GENERAL:
        return GENERAL in classification.languages
    return bool(classification.languages - {GENERAL})


def _session_exchanges(result: LoadResult, session: Session, classification: Classification) -> list[Exchange]:
    """`exchanges(session)`, computed once per LoadResult and reused across languages."""
    cached = result.cache.get("exchanges")
    if cached is None or cached[0] != len(result.sessions):
        cached = (len(result.sessions), {})
        result.cache["exchanges"] = cached
    by_id: dict[str, list[Exchange]] = cached[1]
    if session.id not in by_id:
        by_id[session.id] = exchanges(session, classification)
    return by_id[session.id]


def _user_text(message: Message) -> str:
    texts = [str(p.get("text") or "") for p in message.parts
             if p.get("type") == "text" and not p.get("synthetic") and not p.get("ignored")]
    return "\n\n".join(t.strip() for t in texts if t.strip())


def agent_allowed(agent: str | None, agents: list[str] | None) -> bool:
    """Whether a turn by this agent is kept: None means the coding agents (all but plan & hidden ones)."""
    if agents is None:
        return agent not in NON_CODING_AGENTS
    return agent in agents


def _output(state: dict[str, Any]) -> str:
    out = state.get("output")
    if out is None:
        return ""
    return out if isinstance(out, str) else json.dumps(out, ensure_ascii=False, sort_keys=True)


def _changes(tool: str, inp: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, before, after) for each change a successful edit/write/multiedit/apply_patch made."""
    if tool == "edit":
        return [(str(inp.get("filePath") or ""), str(inp.get("oldString") or ""), str(inp.get("newString") or ""))]
    if tool == "write":
        return [(str(inp.get("filePath") or ""), "", str(inp.get("content") or ""))]
    if tool == "multiedit":
        return [(str(e.get("filePath") or inp.get("filePath") or ""), str(e.get("oldString") or ""), str(e.get("newString") or ""))
                for e in inp.get("edits") or [] if isinstance(e, dict)]
    if tool == "apply_patch" and isinstance(inp.get("patchText"), str):
        return [(h.path, h.before, h.after) for h in patch_hunks(inp["patchText"]) if h.op in ("add", "update")]
    return []


def conversations(result: LoadResult, language: str, agents: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chat and code_change records of one language's exchanges (see the module docstring), and stats about them.

    `agents`: None keeps the coding agents (a source's own `agents:` setting applies if it has
    one); a list keeps exactly those agents. Turns that were aborted or errored, failed tool calls,
    synthetic/ignored text, reasoning and compaction are dropped.
    """
    labels = classifications(result)
    scrub = _Scrubber()
    records: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    counts: Counter = Counter()
    decided: Counter = Counter()
    contributing: set[str] = set()
    for session in result.sessions:
        cls = labels.get(session.id)
        if cls is None or not _considered(cls, language):
            continue
        mine = [ex for ex in _session_exchanges(result, session, cls) if language in ex[2].languages]
        if not mine:
            continue
        counts["sessions"] += 1
        decided[cls.decided_by] += 1
        allowed = agents if agents is not None else result.agents_by_source.get(session.source)
        for rec in _session_records(session, mine, language, allowed, scrub, dropped, counts):
            records.append(rec)
            contributing.add(session.id)
    samples = Counter(r["kind"] for r in records)
    stats: dict[str, Any] = {
        "language": language,
        "sessions": counts["sessions"],
        "sessions_with_samples": len(contributing),
        "messages": counts["messages"],
        "tool_calls": counts["tool_calls"],
        "samples": {"chat": samples["chat"], "code_change": samples["code_change"]},
        "dropped": dict(dropped),
        "redactions": dict(scrub.counts),
        "classification": dict(decided),
        "exchanges_by_own_signal": counts["exchanges_by_own_signal"],
        "exchanges_inherited": counts["exchanges_inherited"],
        "general_sessions": sum(1 for c in labels.values() if GENERAL in c.languages),
        "skipped": list(result.skipped),
    }
    return records, stats


def _session_records(session: Session, chosen: list[Exchange], language: str, agents: list[str] | None,
                     scrub: _Scrubber, dropped: Counter, counts: Counter) -> Iterable[dict[str, Any]]:
    source = scrub.text(session.source)
    for user, steps, cls in chosen:
        if any(p.get("type") == "compaction" for p in user.parts):
            dropped["compaction"] += 1
            continue
        prompt = _user_text(user)
        if not prompt:
            dropped["no_prompt"] += 1
            continue
        if not steps:
            dropped["no_answer"] += 1
            continue
        if any(s.error or not s.completed for s in steps):
            dropped["aborted"] += 1
            continue
        agent = next((s.agent for s in steps if s.agent), None) or user.agent
        if not agent_allowed(agent, agents):
            dropped["agent"] += 1
            continue
        messages: list[dict[str, Any]] = [{"role": "user", "content": scrub.text(prompt)}]
        changes: list[dict[str, Any]] = []
        for step in steps:
            text = "\n\n".join(str(p.get("text") or "").strip() for p in step.parts
                               if p.get("type") == "text" and not p.get("synthetic") and not p.get("ignored") and str(p.get("text") or "").strip())
            calls: list[dict[str, Any]] = []
            results: list[dict[str, Any]] = []
            for part in step.parts:
                if part.get("type") != "tool":
                    continue
                state = part.get("state") if isinstance(part.get("state"), dict) else {}
                if state.get("status") != "completed":
                    dropped["failed_tool_calls" if state.get("status") == "error" else "unfinished_tool_calls"] += 1
                    continue
                name = str(part.get("tool") or "")
                inp = state.get("input") if isinstance(state.get("input"), dict) else {}
                calls.append({"type": "function", "function": {"name": name, "arguments": scrub.value(inp)}})
                results.append({"role": "tool", "name": name, "content": scrub.text(_output(state))})
                if name in CHANGE_TOOLS:
                    for path, before, after in _changes(name, inp):
                        if path and before != after and is_code_of(path, language, after):
                            changes.append({"kind": "code_change", "language": language, "session": session.id, "source": source,
                                            "path": scrub.text(path), "before": scrub.text(before), "after": scrub.text(after)})
            if not text and not calls:
                continue
            reply: dict[str, Any] = {"role": "assistant", "content": scrub.text(text)}
            if calls:
                reply["tool_calls"] = calls
            messages.append(reply)
            messages.extend(results)
            counts["tool_calls"] += len(calls)
        if len(messages) == 1:
            dropped["empty"] += 1
            continue
        counts["messages"] += len(messages)
        counts["exchanges_inherited" if cls.decided_by == INHERITED else "exchanges_by_own_signal"] += 1
        weights = {lang: round(w, 3) for lang, w in cls.weights.items() if round(w, 3) > 0}
        yield {"kind": "chat", "language": language, "session": session.id, "source": source, "messages": messages,
               "weights": weights}
        yield from changes


def collect(sources: Iterable[SessionSource | Mapping[str, Any]], base_dir: Path | str, language: str,
            agents: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Load the sources, classify the sessions and build one language's records: (records, stats, warnings)."""
    result = load_sources(sources, base_dir)
    records, stats = conversations(result, language, agents)
    return records, stats, list(result.warnings)
