"""Reading opencode's SQLite database in each schema generation, its JSON trees, and failures."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from session_builders import Spec, bash, create_schema, edit, insert, reasoning, text, tool, write_db, write_storage

from forge_assets.config import SessionSource
from forge_assets.sessions import SessionSourceError, load_sources


def rust_session(title: str = "fix the parser") -> Spec:
    s = Spec(title=title)
    s.user("The parser panics on empty input, fix it")
    s.assistant(reasoning("Look at the parser first."), tool("read", {"filePath": "/home/dev/project/src/parser.rs"}, "fn parse() {}"))
    s.assistant(edit("/home/dev/project/src/parser.rs", "fn parse() {}", "fn parse() -> Option<()> { None }"))
    s.assistant(bash("cargo test", "test result: ok. 3 passed; 0 failed"))
    s.assistant(text("Fixed: `parse` now returns None on empty input."))
    return s


def _src(path: Path, **kw: object) -> SessionSource:
    return SessionSource(opencode=str(path), **kw)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("generation", ["early", "late"])
def test_v1_database_each_generation(tmp_path: Path, generation: str) -> None:
    spec = rust_session()
    db = write_db(tmp_path / "opencode.db", [spec], generation)
    result = load_sources([_src(db)], tmp_path)
    assert result.warnings == [] and result.skipped == []
    (s,) = result.sessions
    assert (s.id, s.title, s.directory, s.kind) == (spec.id, "fix the parser", "/home/dev/project", "opencode-sqlite")
    assert s.agent == "build"  # the `agent` column when present, else the messages' agent
    assert [m.role for m in s.messages] == ["user", "assistant", "assistant", "assistant", "assistant"]
    assert all(m.completed and m.error is None for m in s.messages)
    tool_parts = [p for m in s.messages for p in m.parts if p["type"] == "tool"]
    assert [p["tool"] for p in tool_parts] == ["read", "edit", "bash"]
    assert all(p["id"].startswith("prt_") for m in s.messages for p in m.parts)
    assert tool_parts[2]["state"]["output"].startswith("test result: ok")


def test_late_columns_are_detected_not_assumed(tmp_path: Path) -> None:
    spec = rust_session()
    spec.agent = "custom-reviewer"
    db = write_db(tmp_path / "opencode.db", [spec], "late")
    (s,) = load_sources([_src(db)], tmp_path).sessions
    assert s.agent == "custom-reviewer"  # read from the session.agent column


def test_v2_session_message_rows(tmp_path: Path) -> None:
    spec = rust_session()
    spec.user("now also handle whitespace", text("<system-reminder>be brief</system-reminder>", synthetic=True))
    spec.assistant(edit("/home/dev/project/src/parser.rs", "x", "y", status="error"))
    spec.assistant(text("half an answer"), completed=False, error="The operation was aborted.")
    db = write_db(tmp_path / "opencode.db", [spec], "v2")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM message").fetchone()[0] == 0
        types = [r[0] for r in conn.execute("SELECT type FROM session_message ORDER BY seq")]
    assert types.count("synthetic") == 1 and "assistant" in types
    (s,) = load_sources([_src(db)], tmp_path).sessions
    tools = [p for m in s.messages for p in m.parts if p["type"] == "tool"]
    assert [p["tool"] for p in tools] == ["read", "edit", "bash", "edit"]
    assert tools[2]["state"] == {"status": "completed", "input": {"command": "cargo test", "description": "run"},
                                 "output": "test result: ok. 3 passed; 0 failed"}
    assert tools[0]["callID"].startswith("call_") and tools[3]["state"]["status"] == "error"
    assert any(p.get("synthetic") and "be brief" in p["text"] for m in s.messages for p in m.parts)
    last = s.messages[-1]
    assert last.role == "assistant" and not last.completed and last.error == "The operation was aborted."


def test_v2_compaction_and_shell_rows(tmp_path: Path) -> None:
    db = tmp_path / "opencode.db"
    spec = Spec()
    write_db(db, [spec], "v2")
    with sqlite3.connect(db) as conn:
        rows = [("user", {"text": "hello", "files": [], "agents": [], "time": {"created": 1}}),
                ("shell", {"callID": "c1", "command": "go test ./...", "output": "ok  \tex/pkg\t0.01s", "time": {"created": 2, "completed": 3}}),
                ("agent-switched", {"agent": "plan", "time": {"created": 4}}),
                ("compaction", {"reason": "auto", "summary": "we fixed things", "time": {"created": 5}})]
        for seq, (kind, data) in enumerate(rows):
            conn.execute("INSERT INTO session_message VALUES (?,?,?,?,?,?,?)", (f"evt_{seq}", spec.id, kind, seq, seq, seq, json.dumps(data)))
    (s,) = load_sources([_src(db)], tmp_path).sessions
    assert [m.role for m in s.messages] == ["user", "user", "assistant"]  # agent switch is bookkeeping
    assert s.messages[1].parts[0]["tool"] == "bash" and s.messages[1].parts[0]["state"]["input"]["command"] == "go test ./..."
    assert s.messages[2].parts[0]["type"] == "compaction" and s.messages[2].summary


def test_wal_frames_are_read_and_nothing_is_written_beside_the_db(tmp_path: Path) -> None:
    db = tmp_path / "opencode.db"
    writer = sqlite3.connect(db)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # keep the new session in the -wal file only
    create_schema(writer, "late")
    writer.commit()
    fresh = rust_session("only in the WAL")
    insert(writer, [fresh])
    writer.commit()
    assert (tmp_path / "opencode.db-wal").stat().st_size > 0
    before = _files(tmp_path)
    result = load_sources([_src(db)], tmp_path)
    assert [s.title for s in result.sessions] == ["only in the WAL"]
    assert _files(tmp_path) == before
    writer.close()


def test_locked_database_is_still_read_without_creating_files(tmp_path: Path) -> None:
    db = write_db(tmp_path / "opencode.db", [rust_session()], "late")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        plain = sqlite3.connect(db, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            plain.execute("SELECT count(*) FROM session").fetchone()  # an ordinary reader is locked out
        plain.close()
        # immutable=1 takes no lock, so Forge reads the committed data while opencode holds the lock.
        result = load_sources([_src(db)], tmp_path)
        assert len(result.sessions) == 1 and len(result.sessions[0].messages) == 5
        assert not (tmp_path / "opencode.db-wal").exists() and not (tmp_path / "opencode.db-shm").exists()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_random_bytes_are_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "opencode.db"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(SessionSourceError) as err:
        load_sources([_src(bad)], tmp_path)
    msg = str(err.value)
    assert str(bad) in msg and "not an SQLite database" in msg and "Fix:" in msg


def test_corrupt_pages_are_a_clear_error(tmp_path: Path) -> None:
    db = write_db(tmp_path / "opencode.db", [rust_session()], "late")
    raw = bytearray(db.read_bytes())
    raw[100:] = os.urandom(len(raw) - 100)  # keep the header, destroy the schema and data pages
    db.write_bytes(bytes(raw))
    with pytest.raises(SessionSourceError) as err:
        load_sources([_src(db)], tmp_path)
    assert str(db) in str(err.value) and "Fix:" in str(err.value)


def test_unknown_schema_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "opencode.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id integer primary key, body text)")
    with pytest.raises(SessionSourceError, match="not an opencode one") as err:
        load_sources([_src(db)], tmp_path)
    assert "notes" in str(err.value)


def test_missing_path_fails_or_is_skipped(tmp_path: Path) -> None:
    good = write_db(tmp_path / "opencode.db", [rust_session()], "late")
    missing = _src(tmp_path / "nowhere" / "opencode.db")
    with pytest.raises(SessionSourceError, match="no such file or folder"):
        load_sources([missing, _src(good)], tmp_path)
    skipping = SessionSource(opencode=str(tmp_path / "nowhere" / "opencode.db"), on_error="skip")
    result = load_sources([skipping, _src(good)], tmp_path)
    assert len(result.sessions) == 1
    assert result.skipped[0]["source"].endswith("nowhere/opencode.db") and "no such file" in result.skipped[0]["error"]
    assert any("skipped" in w for w in result.warnings)


def test_skip_covers_corrupt_files_too(tmp_path: Path) -> None:
    bad = tmp_path / "broken.db"
    bad.write_bytes(b"not sqlite at all" * 50)
    result = load_sources([{"opencode": str(bad), "on_error": "skip"}], tmp_path)
    assert result.sessions == [] and "not an SQLite database" in result.skipped[0]["error"]


def test_no_sources_is_an_empty_result(tmp_path: Path) -> None:
    result = load_sources([], tmp_path)
    assert (result.sessions, result.skipped, result.warnings) == ([], [], [])


def test_relative_paths_are_resolved_from_base_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_db(tmp_path / "data" / "opencode.db", [rust_session()], "early")
    result = load_sources([SessionSource(opencode="data/opencode.db")], tmp_path)
    assert len(result.sessions) == 1


@pytest.mark.parametrize("layout", ["new", "old"])
def test_json_storage_layouts(tmp_path: Path, layout: str) -> None:
    parent = rust_session("parent")
    child = Spec(parent_id=parent.id, agent="general", title="child").turn("explore the lexer", tool("read", {"filePath": "src/lexer.rs"}))
    root = write_storage(tmp_path / "opencode", [parent, child], layout)
    result = load_sources([_src(root)], tmp_path)
    by_title = {s.title: s for s in result.sessions}
    assert set(by_title) == {"parent", "child"} and by_title["child"].parent_id == parent.id
    assert all(s.kind == "opencode-json" for s in result.sessions)
    p = by_title["parent"]
    assert [m.id for m in p.messages] == [m.id for m in parent.messages]
    assert [p_["tool"] for m in p.messages for p_ in m.parts if p_["type"] == "tool"] == ["read", "edit", "bash"]
    assert by_title["child"].messages[1].agent == "general"


def test_unreadable_json_files_are_warned_about(tmp_path: Path) -> None:
    root = write_storage(tmp_path / "opencode", [rust_session()], "new")
    (root / "message" / "ses_broken").mkdir(parents=True)
    (root / "message" / "ses_broken" / "msg_1.json").write_text("{not json")
    result = load_sources([_src(root)], tmp_path)
    assert any("unreadable JSON" in w and "msg_1.json" in w for w in result.warnings)
    assert any(s.title == "fix the parser" for s in result.sessions)


def test_db_and_json_together_are_deduplicated_db_wins(tmp_path: Path) -> None:
    data = tmp_path / "opencode"
    data.mkdir()
    shared = rust_session("db title")
    json_only = rust_session("only in json")
    write_db(data / "opencode.db", [shared], "late")
    # The JSON copy of the shared session has a different title, one extra message and one extra part.
    shared.title = "json title"
    shared.messages[-1].parts.append({"type": "text", "text": "a part only the JSON has", "id": "prt_zzzzzzzzzzzz"})
    shared.user("an extra prompt the import skipped")
    write_storage(data, [shared, json_only], "new")
    result = load_sources([_src(data)], tmp_path)
    ids = [s.id for s in result.sessions]
    assert len(ids) == len(set(ids)) == 2
    merged = next(s for s in result.sessions if s.id == shared.id)
    assert merged.title == "db title" and merged.kind == "opencode-sqlite"
    msg_ids = [m.id for m in merged.messages]
    assert len(msg_ids) == len(set(msg_ids)) == 6
    part_ids = [p["id"] for m in merged.messages for p in m.parts]
    assert len(part_ids) == len(set(part_ids)) and "prt_zzzzzzzzzzzz" in part_ids
    assert merged.messages[-1].parts[0]["text"] == "an extra prompt the import skipped"
    # Configuring the same data twice (folder and db file) still yields each session once.
    again = load_sources([_src(data), _src(data / "opencode.db"), _src(data / "storage")], tmp_path)
    assert sorted(s.id for s in again.sessions) == sorted(ids)


def test_folder_without_opencode_data_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SessionSourceError, match="no opencode.db"):
        load_sources([_src(tmp_path / "empty")], tmp_path)
