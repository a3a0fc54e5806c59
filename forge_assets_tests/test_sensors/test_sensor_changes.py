"""git_push_sensor sees every real change: reverts, pushes to a URL's default branch; and a quiet tick walks no tree."""

import json
import subprocess
from pathlib import Path

import yaml
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context, instance_for_test

import forge_assets.sensors as sensors
from forge_assets.config import load_config
from forge_assets.definitions import defs
from forge_assets.mining.snapshot import snapshot_of
from forge_assets.sensors import git_push_sensor
from forge_assets_tests.conftest import PY_FILES, RS_FILES, commit_files, git, make_repo, write_config

NEW_RS = "pub fn sub(a: i64, b: i64) -> i64 { a - b }\n"


def _tick(instance: DagsterInstance, cursor: str | None):
    """One evaluation; returns (result, the cursor the daemon would store next)."""
    context = build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = git_push_sensor(context)
    return result, (result.cursor if isinstance(result, SensorResult) and result.cursor else context.cursor)


def test_a_revert_to_an_earlier_state_is_requested_again(two_language_repo: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [two_language_repo])))
    with instance_for_test() as instance:
        first, cursor = _tick(instance, None)  # state A
        instance.add_dynamic_partitions("language", ["python", "rust"])
        keys = {r.partition_key: r.run_key for r in first.run_requests}

        commit_files(two_language_repo, {"src/lib.rs": NEW_RS}, "state B")
        second, cursor = _tick(instance, cursor)
        assert [r.partition_key for r in second.run_requests] == ["rust"]

        git(two_language_repo, "revert", "--no-edit", "HEAD")  # back to A's files
        third, cursor = _tick(instance, cursor)
        assert isinstance(third, SensorResult) and [r.partition_key for r in third.run_requests] == ["rust"]

        rust_keys = [keys["rust"], second.run_requests[0].run_key, third.run_requests[0].run_key]
        assert len(set(rust_keys)) == 3  # three runs; Dagster drops a run key it has seen
        assert rust_keys[0].split(":")[1] == rust_keys[2].split(":")[1]  # the same fingerprint as A
        assert isinstance(_tick(instance, cursor)[0], SkipReason)


def test_a_quiet_tick_walks_no_tree(two_language_repo: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [two_language_repo])))
    walks = []
    real_walk = sensors.snapshot_repos
    monkeypatch.setattr(sensors, "snapshot_repos", lambda *a, **kw: walks.append(1) or real_walk(*a, **kw))
    with instance_for_test() as instance:
        _, cursor = _tick(instance, None)
        instance.add_dynamic_partitions("language", ["python", "rust"])
        assert len(walks) == 1

        result, cursor = _tick(instance, cursor)
        assert isinstance(result, SkipReason) and len(walks) == 1  # no head moved: no walk

        commit_files(two_language_repo, {"README.md": "docs only\n"}, "docs")
        result, cursor2 = _tick(instance, cursor)
        assert isinstance(result, SkipReason) and len(walks) == 2  # a head moved: walked, nothing to rebuild
        assert cursor2 != cursor  # the new head is remembered ...
        result, _ = _tick(instance, cursor2)
        assert isinstance(result, SkipReason) and len(walks) == 2  # ... so the next quiet tick walks nothing

        # A cursor of the first format ({language: fingerprint}) still works: walks once, requests nothing.
        old = json.dumps(json.loads(cursor2)["fingerprints"])
        result, _ = _tick(instance, old)
        assert isinstance(result, SkipReason) and len(walks) == 3


def test_a_changed_setting_walks_again(two_language_repo: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [two_language_repo])))
    with instance_for_test() as instance:
        _, cursor = _tick(instance, None)
        instance.add_dynamic_partitions("language", ["python", "rust"])
        write_config(tmp_path, [two_language_repo], mining={"max_file_bytes": 500})  # app/handlers.py is too large now
        result, _ = _tick(instance, cursor)
        assert [r.partition_key for r in result.run_requests] == ["python"]


def _push(work: Path, files: dict[str, str], message: str, branch: str = "main") -> str:
    sha = commit_files(work, files, message)
    git(work, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    return sha


def test_a_url_repository_follows_the_remote_default_branch(tmp_path: Path, monkeypatch):
    work = make_repo(tmp_path / "work", {**PY_FILES, **RS_FILES})
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True)
    git(work, "remote", "add", "origin", str(remote))
    cfg_path = tmp_path / "forge.yaml"
    cfg_path.write_text(yaml.safe_dump({"artifact_root": str(tmp_path / "artifacts"), "repos": [{"url": remote.as_uri()}]}))
    monkeypatch.setenv("FORGE_CONFIG", str(cfg_path))
    with instance_for_test() as instance:
        first, cursor = _tick(instance, None)  # clones
        instance.add_dynamic_partitions("language", ["python", "rust"])
        assert sorted(r.partition_key for r in first.run_requests) == ["python", "rust"]
        assert isinstance(_tick(instance, cursor)[0], SkipReason)  # fetched; nothing new

        pushed = _push(work, {"src/lib.rs": NEW_RS}, "pushed to main")
        result, cursor = _tick(instance, cursor)
        assert [r.partition_key for r in result.run_requests] == ["rust"]
        snap = snapshot_of(load_config(str(cfg_path)))
        assert snap.repos[0].commit == pushed and not snap.repos[0].warnings
        assert any(f.path == "src/lib.rs" for f in snap.files["rust"])

        # The remote's default branch moves to another branch: the sensor follows it.
        moved = _push(work, {"app/extra.py": "def extra():\n    return 42\n"}, "on trunk", branch="trunk")
        subprocess.run(["git", "symbolic-ref", "HEAD", "refs/heads/trunk"], cwd=remote, check=True)
        result, cursor = _tick(instance, cursor)
        assert [r.partition_key for r in result.run_requests] == ["python"]
        assert snapshot_of(load_config(str(cfg_path))).repos[0].commit == moved
