"""git_push_sensor: new languages become partitions; a push touching one language requests only that one."""

from pathlib import Path

from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context, instance_for_test

from forge_assets.definitions import defs
from forge_assets.sensors import changed_languages, git_push_sensor
from forge_assets_tests.conftest import commit_files, write_config


def _tick(instance: DagsterInstance, cursor: str | None):
    return git_push_sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def test_only_the_changed_language_is_requested(two_language_repo: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [two_language_repo])))
    with instance_for_test() as instance:
        first = _tick(instance, None)
        assert isinstance(first, SensorResult)
        assert sorted(r.partition_key for r in first.run_requests) == ["python", "rust"]
        assert first.dynamic_partitions_requests[0].partition_keys == ["python", "rust"]
        instance.add_dynamic_partitions("language", ["python", "rust"])  # what the daemon does with the request

        assert isinstance(_tick(instance, first.cursor), SkipReason)  # nothing changed

        commit_files(two_language_repo, {"src/lib.rs": "pub fn add(a: i64, b: i64) -> i64 { a + b + 0 }\n"}, "rust only")
        second = _tick(instance, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["rust"]
        assert second.dynamic_partitions_requests == []

        commit_files(two_language_repo, {"README.md": "docs only\n"}, "docs")
        assert isinstance(_tick(instance, second.cursor), SkipReason)  # no source file changed


def test_a_new_language_is_added_as_a_partition(py_repo: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [py_repo])))
    with instance_for_test() as instance:
        first = _tick(instance, None)
        instance.add_dynamic_partitions("language", ["python"])
        commit_files(py_repo, {"web/app.ts": "export const add = (a: number, b: number): number => a + b;\n"}, "add TypeScript")
        second = _tick(instance, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["typescript"]
        assert second.dynamic_partitions_requests[0].partition_keys == ["typescript"]


def test_bad_config_skips_with_the_reason(tmp_path: Path, monkeypatch):
    (tmp_path / "forge.yaml").write_text("repos:\n  - path: ./not-a-repo\n")
    (tmp_path / "not-a-repo").mkdir()
    monkeypatch.setenv("FORGE_CONFIG", str(tmp_path / "forge.yaml"))
    with instance_for_test() as instance:
        result = _tick(instance, None)
    assert isinstance(result, SkipReason) and "is not a git repository" in result.skip_message


def test_changed_languages():
    assert changed_languages({"python": "a", "rust": "b"}, {"python": "a", "rust": "c", "go": "d"}) == ["go", "rust"]
