"""forge_schedule: forge.yaml's `schedule:` adds it; a tick rebuilds the languages no run covers yet; the sensor and the
schedule never request the same (language, fingerprint) twice, whichever comes first (runs created in a real instance)."""

import datetime
from pathlib import Path

import pytest
from dagster import (DagsterInstance, DagsterRunStatus, DefaultScheduleStatus, DefaultSensorStatus, RunRequest, SensorResult, SkipReason,
                     build_schedule_context, build_sensor_context, instance_for_test)

from forge_assets.config import ConfigError
from forge_assets.definitions import defs, make_definitions
from forge_assets.schedules import SCHEDULE_NAME, schedule_settings
from forge_assets.sensors import FINGERPRINT_TAG, LANGUAGE_TAG, git_push_sensor
from forge_assets_tests.conftest import commit_files, git, write_config

NEW_RS = "pub fn sub(a: i64, b: i64) -> i64 { a - b }\n"
NEW_PY = "def extra():\n    return 42\n"
JOB = defs.get_job_def("language_chain")


@pytest.fixture
def scheduled(two_language_repo: Path, tmp_path: Path, monkeypatch):
    """(repo, forge_schedule) for a forge.yaml with `schedule: 0 2 * * *` in Europe/Berlin, which FORGE_CONFIG names."""
    cfg = write_config(tmp_path, [two_language_repo], schedule="0 2 * * *", schedule_timezone="Europe/Berlin",
                       training={"init_from": "previous", "replay": 0.2})
    monkeypatch.setenv("FORGE_CONFIG", str(cfg))
    return two_language_repo, make_definitions(str(cfg)).get_schedule_def(SCHEDULE_NAME)


def _schedule_tick(schedule, instance: DagsterInstance):
    when = datetime.datetime(2026, 1, 2, 2, 0, tzinfo=datetime.timezone.utc)
    return schedule(build_schedule_context(instance=instance, scheduled_execution_time=when))


def _sensor_tick(instance: DagsterInstance, cursor: str | None):
    """One sensor evaluation; returns (result, the cursor the daemon would store next)."""
    context = build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = git_push_sensor(context)
    return result, (result.cursor if isinstance(result, SensorResult) and result.cursor else context.cursor)


def _requests(result) -> list[RunRequest]:
    return list(result.run_requests) if isinstance(result, SensorResult) else list(result)


def _langs(result) -> list[str]:
    return sorted(r.partition_key for r in _requests(result))


def _launch(instance: DagsterInstance, result, status=DagsterRunStatus.NOT_STARTED) -> dict[str, str]:
    """What the daemon does with the requests: a run per request, with its tags, in the instance. {language: run id}."""
    if isinstance(result, SensorResult):
        for add in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    return {r.partition_key: instance.create_run_for_job(JOB, tags={**r.tags, "dagster/partition": r.partition_key}, status=status).run_id
            for r in _requests(result)}


def test_no_schedule_without_the_setting(two_language_repo: Path, tmp_path: Path):
    cfg = write_config(tmp_path, [two_language_repo])
    assert schedule_settings(cfg) is None
    assert make_definitions(str(cfg)).schedules is None  # exactly as before schedules existed
    assert schedule_settings(tmp_path / "missing.yaml") is None
    (tmp_path / "bad.yaml").write_text("no_such_key: 1\n")
    assert schedule_settings(tmp_path / "bad.yaml") is None  # a broken forge.yaml without `schedule:`: runs report it, as before
    (tmp_path / "bad-cron.yaml").write_text("schedule: 'every night'\n")
    with pytest.raises(ConfigError, match="not a cron string"):  # asked for a schedule: the code location says why there is none
        make_definitions(str(tmp_path / "bad-cron.yaml"))


def test_the_schedule_has_the_cron_and_timezone(scheduled):
    _, schedule = scheduled
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "Europe/Berlin"
    assert schedule.job_name == "language_chain"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING  # `schedule:` in forge.yaml is the opt-in
    assert git_push_sensor.default_status == DefaultSensorStatus.STOPPED  # pushes wait for the tick unless switched on


def test_ticks_rebuild_only_what_changed_and_retry_failures(scheduled):
    repo, schedule = scheduled
    with instance_for_test() as instance:
        first = _schedule_tick(schedule, instance)
        assert _langs(first) == ["python", "rust"]  # never built: every language
        assert sorted(instance.get_dynamic_partitions("language")) == ["python", "rust"]
        assert all(r.tags[LANGUAGE_TAG] == r.partition_key and r.tags[FINGERPRINT_TAG] for r in first)
        _launch(instance, first, DagsterRunStatus.SUCCESS)

        quiet = _schedule_tick(schedule, instance)
        assert isinstance(quiet, SkipReason) and "No language's files changed" in quiet.skip_message
        assert "python (run " in quiet.skip_message and "rust (run " in quiet.skip_message

        commit_files(repo, {"src/lib.rs": NEW_RS}, "rust only")
        second = _schedule_tick(schedule, instance)
        assert _langs(second) == ["rust"]
        failed = _launch(instance, second)["rust"]
        assert isinstance(_schedule_tick(schedule, instance), SkipReason)  # created, not started yet: covered

        instance.report_run_failed(instance.get_run_by_id(failed))
        retry = _schedule_tick(schedule, instance)
        assert _langs(retry) == ["rust"] and retry[0].tags == second[0].tags  # a failed run is retried at the next tick
        _launch(instance, retry, DagsterRunStatus.SUCCESS)

        git(repo, "revert", "--no-edit", "HEAD")  # back to the first tick's Rust files: newer than the last build, so rebuilt
        back = _schedule_tick(schedule, instance)
        assert _langs(back) == ["rust"] and back[0].tags[FINGERPRINT_TAG] == next(r for r in first if r.partition_key == "rust").tags[FINGERPRINT_TAG]


def test_sensor_first_then_the_schedule_skips(scheduled):
    repo, schedule = scheduled
    with instance_for_test() as instance:
        result, cursor = _sensor_tick(instance, None)
        _launch(instance, result, DagsterRunStatus.SUCCESS)
        assert isinstance(_schedule_tick(schedule, instance), SkipReason)  # the sensor built both

        commit_files(repo, {"src/lib.rs": NEW_RS}, "rust only")
        result, cursor = _sensor_tick(instance, cursor)
        assert _langs(result) == ["rust"]
        _launch(instance, result, DagsterRunStatus.STARTED)
        tick = _schedule_tick(schedule, instance)
        assert isinstance(tick, SkipReason) and "rust (run " in tick.skip_message  # running for this change: not again


def test_schedule_first_then_the_sensor_skips(scheduled):
    repo, schedule = scheduled
    with instance_for_test() as instance:
        result, cursor = _sensor_tick(instance, None)
        _launch(instance, result, DagsterRunStatus.SUCCESS)

        commit_files(repo, {"src/lib.rs": NEW_RS}, "rust only")
        tick = _schedule_tick(schedule, instance)
        assert _langs(tick) == ["rust"]
        _launch(instance, tick)
        result, cursor = _sensor_tick(instance, cursor)
        assert isinstance(result, SkipReason) and "already built or being built" in result.skip_message and "rust (run " in result.skip_message

        result, cursor = _sensor_tick(instance, cursor)  # the sensor remembered the change it skipped
        assert isinstance(result, SkipReason) and "No language's files changed" in result.skip_message
        commit_files(repo, {"app/extra.py": NEW_PY}, "python only")
        result, cursor = _sensor_tick(instance, cursor)
        assert _langs(result) == ["python"]
