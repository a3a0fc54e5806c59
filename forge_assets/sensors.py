"""git_push_sensor: polls the configured repositories and rebuilds only the languages whose files changed.

Each tick opens the repositories (a URL is fetched, and follows the remote's default branch unless
`branch:` names one) and resolves their head commits. When no head moved and the settings that shape
a snapshot are the same, the tick ends there: no tree is walked. Otherwise every language's fingerprint
(a hash of its (repo, path, blob) rows) is recomputed and each language whose fingerprint differs from
the last poll gets a run. The cursor (JSON) keeps the fingerprints, the heads, a settings digest and a
per-language request counter; the counter is part of the run key, so a revert to an earlier state
(fingerprint A -> B -> A) is a new run, not a duplicate of the first.

The sensor and the schedule (forge_assets/schedules.py) share this module's machinery and one rule against
duplicate runs, since Dagster's run-key dedupe is per instigator: every run either requests is tagged with its
language and the fingerprint it was requested for (LANGUAGE_TAG, FINGERPRINT_TAG), and neither requests a run for
a (language, fingerprint) when the language's newest tagged run that is queued, running or succeeded already has
that fingerprint (`covering_run`). Failed and canceled runs do not count: the schedule's next tick retries them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from dagster import (AssetSelection, DagsterInstance, DagsterRunStatus, DefaultSensorStatus, RunRequest, RunsFilter, SensorEvaluationContext,
                     SensorResult, SkipReason, sensor)

from forge_assets.config import ConfigError, ForgeConfig, load_config
from forge_assets.languages import LanguageNameError
from forge_assets.mining.snapshot import OpenedRepo, RepoError, Snapshot, opened_repos_of, snapshot_of, snapshot_repos
from forge_assets.partitions import add_languages_request, language_partitions

LANGUAGE_ASSETS = AssetSelection.assets("repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf", "deployment")

# The tags of every run the sensor or the schedule requests: what the other instigator looks up.
LANGUAGE_TAG = "forge/language"
FINGERPRINT_TAG = "forge/fingerprint"
# A run in one of these states builds (or built) its fingerprint; a failed or canceled one does not.
COVERING_STATUSES = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                     DagsterRunStatus.SUCCESS]


def language_fingerprints(config_path: str | None = None) -> dict[str, str]:
    """A content fingerprint per language for the configured repositories as they are now (walks every tree)."""
    cfg = load_config(config_path)
    return fingerprints_of(snapshot_of(cfg), cfg)


def fingerprints_of(snap: Snapshot, cfg: ForgeConfig) -> dict[str, str]:
    """The fingerprint of each wanted language (forge.yaml's `languages:`, else every language found)."""
    wanted = cfg.languages or snap.languages()
    return {lang: snap.fingerprint(lang) for lang in wanted}


def changed_languages(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """Languages whose fingerprint is new or differs from the last poll."""
    return sorted(lang for lang, fp in current.items() if previous.get(lang) != fp)


def heads_of(opened: list[OpenedRepo]) -> dict[str, str | None]:
    """Each configured repository's resolved head commit, keyed by position, name and folder."""
    return {f"{i}:{o.state.name}:{o.state.repo_dir}": o.state.commit for i, o in enumerate(opened)}


def settings_digest(cfg: ForgeConfig) -> str:
    """A hash of the settings that shape a snapshot besides the heads: repositories, languages, size limit."""
    body = {"repos": [r.model_dump() for r in cfg.repos], "languages": cfg.languages, "max_file_bytes": cfg.mining.max_file_bytes}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def language_request(language: str, fingerprint: str, run_key: str) -> RunRequest:
    """The run request for one language's chain, tagged with the fingerprint it is for."""
    return RunRequest(partition_key=language, run_key=run_key, tags={LANGUAGE_TAG: language, FINGERPRINT_TAG: fingerprint})


def covering_run(instance: DagsterInstance, language: str, fingerprint: str) -> str | None:
    """The id of the run that already covers (language, fingerprint), if any.

    That is the language's newest run requested by the sensor or the schedule (tagged LANGUAGE_TAG) that is queued,
    starting, running or succeeded, when it was requested for this fingerprint. Only the newest counts, so after
    A -> B -> A the revert is rebuilt; failed and canceled runs are passed over, so their fingerprint is retried.
    """
    records = instance.get_run_records(RunsFilter(tags={LANGUAGE_TAG: language}, statuses=COVERING_STATUSES), limit=1)
    if records and records[0].dagster_run.tags.get(FINGERPRINT_TAG) == fingerprint:
        return records[0].dagster_run.run_id
    return None


def covered_note(covered: dict[str, str]) -> str:
    """`python (run 1a2b3c4d), rust (run ...)`: the languages skipped because a run already covers them."""
    return ", ".join(f"{lang} (run {run_id[:8]})" for lang, run_id in sorted(covered.items()))


@dataclass
class SensorCursor:
    """What git_push_sensor remembers between ticks."""

    fingerprints: dict[str, str] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # runs requested per language so far: part of the run key
    heads: dict[str, str | None] | None = None
    settings: str | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "SensorCursor":
        """The cursor as stored; the first version's plain {language: fingerprint} is read too."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        if "fingerprints" not in data:  # the first cursor format: only fingerprints
            return cls(fingerprints={k: v for k, v in data.items() if isinstance(v, str)})
        return cls(dict(data.get("fingerprints") or {}), dict(data.get("requests") or {}), data.get("heads"), data.get("settings"))

    def dump(self) -> str:
        return json.dumps({"fingerprints": self.fingerprints, "requests": self.requests, "heads": self.heads,
                           "settings": self.settings}, sort_keys=True)


def poll(cfg: ForgeConfig, previous: SensorCursor) -> tuple[dict[str, str], SensorCursor, bool]:
    """(fingerprints now, the next cursor before counting requests, whether trees were walked).

    Opening the repositories fetches URLs; trees are walked only when a head moved or the settings changed.
    """
    opened = opened_repos_of(cfg)
    heads, settings = heads_of(opened), settings_digest(cfg)
    walked = heads != previous.heads or settings != previous.settings
    current = fingerprints_of(snapshot_repos(opened, cfg.mining.max_file_bytes), cfg) if walked else dict(previous.fingerprints)
    return current, SensorCursor(current, dict(previous.requests), heads, settings), walked


@sensor(asset_selection=LANGUAGE_ASSETS, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def git_push_sensor(context: SensorEvaluationContext):
    """Requests a run per language whose files changed since the last poll; adds new languages as partitions."""
    previous = SensorCursor.parse(context.cursor)
    try:
        cfg = load_config()
        current, cursor, _walked = poll(cfg, previous)
    except (ConfigError, RepoError) as exc:
        return SkipReason(str(exc))
    changed = changed_languages(previous.fingerprints, current)
    known = set(context.instance.get_dynamic_partitions(language_partitions.name))
    new = sorted(set(current) - known)
    try:
        add_request = [add_languages_request(new)] if new else []
    except LanguageNameError as exc:  # forge.yaml is checked when read; this is the gate for any other source
        return SkipReason(str(exc))
    covered = {lang: run_id for lang in changed if (run_id := covering_run(context.instance, lang, current[lang]))}
    wanted = [lang for lang in changed if lang not in covered]
    for lang in wanted:
        cursor.requests[lang] = cursor.requests.get(lang, 0) + 1
    if not wanted and not new:
        if cursor.dump() != context.cursor:  # a head moved without touching a language: remember it, skip the walk next time
            context.update_cursor(cursor.dump())
        if covered:
            return SkipReason(f"Changed, but already built or being built for these files (by the schedule or an earlier run): {covered_note(covered)}.")
        return SkipReason("No language's files changed since the last poll.")
    return SensorResult(
        run_requests=[language_request(lang, current[lang], f"{lang}:{current[lang]}:{cursor.requests[lang]}") for lang in wanted],
        dynamic_partitions_requests=add_request,
        cursor=cursor.dump(),
    )
