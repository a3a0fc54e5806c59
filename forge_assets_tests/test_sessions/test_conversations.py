"""Training records from sessions: chat and code_change shapes, dropping rules, agents, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from session_builders import Spec, apply_patch, bash, edit, read, reasoning, text, tool, write, write_db

from forge_assets.chat import render_chat
from forge_assets.config import SessionSource
from forge_assets.sessions import collect, conversations, load_sources

P = "/home/dev/project"
AWS = "AKIAIOSFODNN7EXAMPLE"
GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
DB_PASSWORD = "hunter2-Sup3rS3cret"
PG_PASSWORD = "pgS3cretPa55"


def rust_turns() -> Spec:
    s = Spec(title="rust work")
    s.user("Make `parse` return a Result", text("<file>injected context</file>", synthetic=True))
    s.assistant(reasoning("thinking about errors"), read(f"{P}/src/parse.rs", "fn parse() {}"))
    s.assistant(edit(f"{P}/src/parse.rs", "fn parse() {}", "fn parse() -> Result<(), Error> { Ok(()) }"),
                edit(f"{P}/src/missing.rs", "x", "y", status="error"))
    s.assistant(bash("cargo test", "test result: ok. 4 passed"))
    s.assistant(text("`parse` now returns a Result."))
    return s


def load(tmp_path: Path, specs: list[Spec], **source: object):
    db = write_db(tmp_path / "opencode.db", specs, "late")
    return load_sources([SessionSource(opencode=str(db), **source)], tmp_path)


def test_chat_record_shape_and_rendering(tmp_path: Path) -> None:
    spec = rust_turns()
    records, stats = conversations(load(tmp_path, [spec]), "rust")
    chats = [r for r in records if r["kind"] == "chat"]
    assert len(chats) == 1
    rec = chats[0]
    assert set(rec) == {"kind", "language", "session", "source", "messages", "weights"}
    assert rec["weights"] == {"rust": 1.0}  # the exchange's own weights
    assert (rec["language"], rec["session"]) == ("rust", spec.id) and rec["source"].endswith("opencode.db")
    msgs = rec["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"]
    assert msgs[0] == {"role": "user", "content": "Make `parse` return a Result"}  # synthetic context dropped
    assert msgs[1]["tool_calls"] == [{"type": "function", "function": {"name": "read", "arguments": {"filePath": f"{P}/src/parse.rs"}}}]
    assert msgs[2] == {"role": "tool", "name": "read", "content": "fn parse() {}"}
    assert [c["function"]["name"] for c in msgs[3]["tool_calls"]] == ["edit"]  # the failed edit is gone
    assert msgs[-1] == {"role": "assistant", "content": "`parse` now returns a Result."}
    assert "thinking about errors" not in json.dumps(rec)  # reasoning is not trained on
    rendered = render_chat(msgs)
    assert rendered.count("<tool_call>") == 3 and rendered.count("<tool_response>") == 3
    assert '"name": "edit"' in rendered and rendered.endswith("`parse` now returns a Result.<|im_end|>\n")
    assert stats["samples"] == {"chat": 1, "code_change": 1}
    assert stats["messages"] == 8 and stats["tool_calls"] == 3
    assert stats["dropped"]["failed_tool_calls"] == 1
    assert stats["sessions"] == 1 and stats["general_sessions"] == 0 and stats["classification"] == {"edit": 1}
    assert stats["exchanges_by_own_signal"] == 1 and stats["exchanges_inherited"] == 0


def test_code_change_records(tmp_path: Path) -> None:
    patch = ("*** Begin Patch\n*** Update File: src/lib.rs\n@@ fn main\n fn keep() {}\n-fn old() {}\n+fn new() {}\n"
             "@@\n-let a = 1;\n+let a = 2;\n*** Add File: src/added.rs\n+pub fn added() {}\n*** Delete File: src/gone.rs\n"
             "*** Update File: README.md\n@@\n-old\n+new\n*** End Patch")
    s = Spec().turn("refactor", write(f"{P}/src/new.rs", "pub struct New;"), apply_patch(patch),
                    edit(f"{P}/src/lib.rs", "a", "a"), bash("cargo build", "Finished `dev` profile"))
    records, stats = conversations(load(tmp_path, [s]), "rust")
    changes = [(r["path"], r["before"], r["after"]) for r in records if r["kind"] == "code_change"]
    assert changes == [
        (f"{P}/src/new.rs", "", "pub struct New;"),
        ("src/lib.rs", "fn keep() {}\nfn old() {}", "fn keep() {}\nfn new() {}"),
        ("src/lib.rs", "let a = 1;", "let a = 2;"),
        ("src/added.rs", "", "pub fn added() {}"),
    ]  # the delete, the README (not rust) and the no-op edit are not code changes
    rec = next(r for r in records if r["kind"] == "code_change")
    assert set(rec) == {"kind", "language", "session", "source", "path", "before", "after"} and rec["language"] == "rust"
    assert stats["samples"]["code_change"] == 4


def test_aborted_errored_and_unfinished_turns_are_dropped(tmp_path: Path) -> None:
    s = Spec()
    s.turn("good turn", edit(f"{P}/a.py", "x = 1", "x = 2"), answer="done")
    s.user("aborted turn")
    s.assistant(edit(f"{P}/b.py", "ABORTED_EDIT", "y"))
    s.assistant(text("ABORTED_TEXT"), completed=False, error="The operation was aborted.")
    s.user("errored turn")
    s.assistant(text("ERRORED_TEXT"), error="Provider overloaded")
    s.user("still running")
    s.assistant(text("UNFINISHED_TEXT"), completed=False)
    records, stats = conversations(load(tmp_path, [s]), "python")
    dumped = json.dumps(records)
    assert [r["messages"][0]["content"] for r in records if r["kind"] == "chat"] == ["good turn"]
    for marker in ("ABORTED_EDIT", "ABORTED_TEXT", "ERRORED_TEXT", "UNFINISHED_TEXT"):
        assert marker not in dumped
    assert stats["dropped"]["aborted"] == 3
    assert [r["before"] for r in records if r["kind"] == "code_change"] == ["x = 1"]


def test_compaction_and_summary_turns_are_dropped(tmp_path: Path) -> None:
    s = Spec().turn("real work", edit(f"{P}/a.py"), answer="ok")
    s.user("", {"type": "compaction", "auto": True})
    s.assistant(text("SUMMARY OF THE CONVERSATION"), agent="compaction", summary=True)
    s.user("", text("Continue if you have next steps", synthetic=True))
    s.assistant(text("CONTINUED"))
    records, stats = conversations(load(tmp_path, [s]), "python")
    dumped = json.dumps(records)
    assert "SUMMARY OF THE CONVERSATION" not in dumped and "Continue if you have" not in dumped
    assert stats["dropped"]["compaction"] == 1 and len([r for r in records if r["kind"] == "chat"]) == 1


def test_agent_filter(tmp_path: Path) -> None:
    s = Spec()
    s.turn("build this", edit(f"{P}/a.go"), answer="built")
    s.user("plan that", agent="plan")
    s.assistant(read(f"{P}/b.go"), agent="plan")
    s.assistant(text("the plan"), agent="plan")
    s.user("review it")
    s.assistant(text("older rows only have mode"), agent="reviewer", mode_only=True)
    result = load(tmp_path, [s])

    def prompts(agents: list[str] | None) -> list[str]:
        return [r["messages"][0]["content"] for r in conversations(result, "go", agents)[0] if r["kind"] == "chat"]

    assert prompts(None) == ["build this", "review it"]  # default: every agent but plan
    assert prompts(["plan"]) == ["plan that"]
    assert prompts(["reviewer", "build"]) == ["build this", "review it"]
    assert prompts([]) == []
    assert conversations(result, "go", ["build"])[1]["dropped"]["agent"] == 2


def test_agents_from_the_source_config(tmp_path: Path) -> None:
    s = Spec().turn("build this", edit(f"{P}/a.go"), answer="built")
    s.user("plan that", agent="plan")
    s.assistant(text("the plan"), agent="plan")
    result = load(tmp_path, [s], agents=["plan"])
    records, _ = conversations(result, "go")
    assert [r["messages"][0]["content"] for r in records if r["kind"] == "chat"] == ["plan that"]


def test_only_sessions_of_the_language_contribute(tmp_path: Path) -> None:
    rust, py, chat = rust_turns(), Spec().turn("py", edit(f"{P}/a.py")), Spec().turn("hello", answer="hi")
    result = load(tmp_path, [rust, py, chat])
    records, stats = conversations(result, "python")
    assert {r["session"] for r in records} == {py.id}
    assert stats["general_sessions"] == 1 and stats["sessions"] == 1
    # `general` is reported, not trained per language; asked for explicitly it yields only no-signal sessions.
    assert {r["session"] for r in conversations(result, "general")[0]} == {chat.id}
    none, none_stats = conversations(result, "swift")
    assert none == [] and none_stats["sessions"] == 0 and none_stats["samples"] == {"chat": 0, "code_change": 0}


def test_subagent_sessions_contribute_to_the_parents_language(tmp_path: Path) -> None:
    parent = Spec().turn("port it", edit(f"{P}/src/a.rs"), tool("task", {"description": "d", "prompt": "look", "subagent_type": "explore"}, "found"))
    child = Spec(parent_id=parent.id, agent="explore").turn("look", tool("webfetch", {"url": "https://docs.rs"}, "<html>"), answer="docs say X")
    records, _ = conversations(load(tmp_path, [parent, child]), "rust")
    assert {r["session"] for r in records if r["kind"] == "chat"} == {parent.id, child.id}


def test_secrets_never_reach_a_record(tmp_path: Path) -> None:
    s = Spec()
    s.user(f"deploy with key {AWS} please")
    s.assistant(bash("cat .env", f"DB_PASSWORD={DB_PASSWORD}\nDEBUG=1"))
    s.assistant(edit(f"{P}/config/settings.py", "DATABASE_URL = ''", f"DATABASE_URL = 'postgres://app:{PG_PASSWORD}@db.internal:5432/app'"))
    s.assistant(write(f"{P}/scripts/ci.py", f"TOKEN = '{GHP}'\n"))
    s.assistant(text(f"Done; I used {GHP} and postgres://app:{PG_PASSWORD}@db.internal/app"))
    records, stats = conversations(load(tmp_path, [s]), "python")
    dumped = json.dumps(records)
    assert records and len([r for r in records if r["kind"] == "code_change"]) == 2
    for secret in (AWS, GHP, DB_PASSWORD, PG_PASSWORD):
        assert secret not in dumped
    red = stats["redactions"]
    # Type names belong to forge_assets.scrub; only their families are pinned here.
    assert sum(n for k, n in red.items() if "aws" in k) >= 1 and sum(n for k, n in red.items() if "github" in k) >= 2
    assert sum(red.values()) >= 6
    assert "[REDACTED_" in dumped
    print(f"\nredactions: {red}")


def test_collect_end_to_end(tmp_path: Path) -> None:
    db = write_db(tmp_path / "opencode.db", [rust_turns(), Spec().turn("py", edit(f"{P}/a.py"))], "early")
    sources = [SessionSource(opencode=str(db)), SessionSource(opencode=str(tmp_path / "gone.db"), on_error="skip")]
    records, stats, warnings = collect(sources, tmp_path, "rust")
    assert [r["kind"] for r in records] == ["chat", "code_change"]
    assert stats["language"] == "rust" and stats["samples"] == {"chat": 1, "code_change": 1}
    assert stats["skipped"][0]["source"].endswith("gone.db") and any("gone.db" in w for w in warnings)


@pytest.mark.parametrize("generation", ["early", "v2"])
def test_same_records_from_v1_and_v2_storage(tmp_path: Path, generation: str) -> None:
    spec = rust_turns()
    db = write_db(tmp_path / "opencode.db", [spec], generation)
    records, _ = conversations(load_sources([SessionSource(opencode=str(db))], tmp_path), "rust")
    chat = next(r for r in records if r["kind"] == "chat")
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"]
    assert chat["messages"][0]["content"] == "Make `parse` return a Result"
