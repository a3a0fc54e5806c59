"""session_logs as an asset: a database and a JSON tree together, secrets scrubbed, bad files handled."""

import json
from pathlib import Path

from dagster import AssetKey

from forge_assets.assets.sessions import session_logs
from forge_assets_tests.conftest import forge_instance, materialize_assets, write_config
from forge_assets_tests.test_sessions.session_builders import Spec, bash, edit, write_db, write_storage

AWS_KEY = "AKIAZ7QW3RTY5UIOPLKJ"
DB_PASSWORD = "s3cr3t-Passw0rd-99"


def python_session(title: str) -> Spec:
    s = Spec(title=title)
    s.turn("Make the loader skip blank lines",
           edit("/home/dev/app/pipeline.py", "rows = fh", "rows = [l for l in fh if l.strip()]"),
           bash("pytest -q", f"3 passed in 0.1s\nAWS_ACCESS_KEY_ID={AWS_KEY}\nDATABASE_URL=postgres://app:{DB_PASSWORD}@db/app"),
           answer="Blank lines are skipped now; the tests pass.")
    return s


def _run(instance, cfg: Path):
    return materialize_assets(cfg, [session_logs], instance=instance, raise_on_error=False)


def test_db_and_json_tree_together_without_duplicates_or_secrets(py_repo: Path, tmp_path: Path):
    shared, json_only = python_session("shared"), python_session("json only")
    (tmp_path / "oc").mkdir()
    db = write_db(tmp_path / "oc" / "opencode.db", [shared])
    storage = write_storage(tmp_path / "oc", [shared, json_only])
    cfg = write_config(tmp_path, [py_repo], sessions=[{"opencode": str(db)}, {"opencode": str(storage)}])
    with forge_instance() as instance:
        assert _run(instance, cfg).success
        meta = instance.get_latest_materialization_event(AssetKey("session_logs")).asset_materialization.metadata
    body = (tmp_path / "artifacts" / "session_logs" / "python" / "promoted" / "records.jsonl").read_text()
    records = [json.loads(line) for line in body.splitlines()]
    chats = [r for r in records if r["kind"] == "chat"]
    assert sorted({r["session"] for r in chats}) == sorted([shared.id, json_only.id]) and len(chats) == 2
    assert any(r["kind"] == "code_change" and r["path"].endswith("pipeline.py") for r in records)
    assert AWS_KEY not in body and DB_PASSWORD not in body
    assert meta["records"].value == len(records)


def test_corrupt_source_fails_and_keeps_the_last_good_version_unless_skipped(py_repo: Path, tmp_path: Path):
    good = write_db(tmp_path / "good.db", [python_session("good")])
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    root = tmp_path / "artifacts" / "session_logs" / "python"
    with forge_instance() as instance:
        assert _run(instance, write_config(tmp_path, [py_repo], sessions=[{"opencode": str(good)}])).success
        before = (root / "promoted").resolve()

        failed = _run(instance, write_config(tmp_path, [py_repo], sessions=[{"opencode": str(good)}, {"opencode": str(bad)}]))
        assert not failed.success
        error = failed.get_step_failure_events()[0].event_specific_data.error.cause or failed.get_step_failure_events()[0].event_specific_data.error
        assert "bad.db" in (error.message or "") or "bad.db" in str(error)
        assert (root / "promoted").resolve() == before

        skipped = _run(instance, write_config(tmp_path, [py_repo], sessions=[{"opencode": str(good)}, {"opencode": str(bad), "on_error": "skip"}]))
        assert skipped.success
        meta = instance.get_latest_materialization_event(AssetKey("session_logs")).asset_materialization.metadata
        assert meta["skipped_sources"].value == 1 and str(bad) in meta["skipped"].value
        assert (root / "promoted").resolve() == before  # the good source's records are unchanged


def test_no_sessions_configured_gives_empty_logs_and_a_warning(py_repo: Path, tmp_path: Path):
    with forge_instance() as instance:
        result = _run(instance, write_config(tmp_path, [py_repo]))
        assert result.success
        logs = [e.message for e in instance.all_logs(result.run_id) if e.level >= 30]
    assert any("No `sessions:` configured" in m for m in logs)
    assert (tmp_path / "artifacts" / "session_logs" / "python" / "promoted" / "records.jsonl").read_text() == ""
