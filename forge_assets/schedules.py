"""forge_schedule: forge.yaml's `schedule:` (a cron string) rebuilds, at each tick, the languages whose files changed.

A tick reads forge.yaml, opens the repositories (fetching URLs), walks their trees and computes each wanted
language's fingerprint with the push sensor's machinery (forge_assets/sensors.py). A language gets a run when no
run already covers its current fingerprint (`sensors.covering_run`): never built by the sensor or the schedule,
its files changed since its newest such run, or that run failed or was canceled (so a failure is retried at the
next tick). New languages are added as partitions first. When every language is covered the tick is a SkipReason
that says so. The runs are tagged like the sensor's, so the sensor skips what a tick requested and the reverse.

The cron and time zone are read when the Definitions load (reload the code location after changing them); a
missing forge.yaml, or one without `schedule:`, adds no schedule at all.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from dagster import DefaultScheduleStatus, ScheduleDefinition, ScheduleEvaluationContext, SkipReason, schedule

from forge_assets.config import ConfigError, config_path, load_config
from forge_assets.languages import LanguageNameError
from forge_assets.mining.snapshot import RepoError
from forge_assets.partitions import add_languages
from forge_assets.sensors import SensorCursor, covered_note, covering_run, language_request, poll

SCHEDULE_NAME = "forge_schedule"


def schedule_settings(path: str | Path | None = None) -> tuple[str, str] | None:
    """(cron, time zone) from forge.yaml ($FORGE_CONFIG, else ./forge.yaml), or None when it sets no schedule.

    A missing file gives None. A file that fails validation gives None too, unless it asks for a schedule: then the
    ConfigError is raised, so the code location shows why its schedule is missing instead of loading without it.
    """
    p = Path(path).resolve() if path else config_path()
    if not p.is_file():
        return None
    try:
        cfg = load_config(p)
    except ConfigError:
        if _asks_for_schedule(p):
            raise
        return None
    return (cfg.schedule, cfg.schedule_timezone) if cfg.schedule else None


def _asks_for_schedule(p: Path) -> bool:
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("schedule") is not None


def scheduled_requests(context: ScheduleEvaluationContext):
    """One tick: a run request per language whose current fingerprint no run covers, else a SkipReason."""
    try:
        cfg = load_config()
        current, _cursor, _walked = poll(cfg, SensorCursor())  # no cursor between ticks: always walks (one walk per tick)
    except (ConfigError, RepoError) as exc:
        return SkipReason(str(exc))
    if not current:
        return SkipReason("The configured repositories hold no source files of a known language; nothing to build.")
    try:
        add_languages(context.instance, current, SCHEDULE_NAME)
    except LanguageNameError as exc:
        return SkipReason(str(exc))
    covered = {lang: run_id for lang, fp in current.items() if (run_id := covering_run(context.instance, lang, fp))}
    wanted = sorted(lang for lang in current if lang not in covered)
    if not wanted:
        return SkipReason(f"No language's files changed since it was last built: {covered_note(covered)}.")
    # Dagster dedupes a schedule's run keys per tick only, so a failed run's key can be requested again next tick.
    return [language_request(lang, current[lang], f"{lang}:{current[lang]}") for lang in wanted]


def build_schedules(settings: tuple[str, str] | None, job) -> list[ScheduleDefinition]:
    """[forge_schedule] running `job` (the language chain) on the cron in the time zone; [] without settings.

    Its default status is RUNNING: writing `schedule:` in forge.yaml is the opt-in (the Dagster daemon must run).
    """
    if settings is None:
        return []
    cron, timezone = settings

    @schedule(name=SCHEDULE_NAME, cron_schedule=cron, execution_timezone=timezone, job=job, default_status=DefaultScheduleStatus.RUNNING,
              description=f"forge.yaml `schedule: {cron}` ({timezone}): rebuilds the languages whose files changed since they were last built.")
    def forge_schedule(context: ScheduleEvaluationContext):
        return scheduled_requests(context)

    return [forge_schedule]
