"""git_push_sensor: polls the configured repositories and rebuilds only the languages whose files changed."""

import json

from dagster import AssetSelection, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from forge_assets.config import ConfigError, load_config
from forge_assets.mining.snapshot import RepoError, snapshot_of
from forge_assets.partitions import language_partitions

LANGUAGE_ASSETS = AssetSelection.assets("repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf", "deployment")


def language_fingerprints(config_path: str | None = None) -> dict[str, str]:
    """A content fingerprint per language for the configured repositories as they are now."""
    cfg = load_config(config_path)
    snap = snapshot_of(cfg)
    wanted = cfg.languages or snap.languages()
    return {lang: snap.fingerprint(lang) for lang in wanted}


def changed_languages(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """Languages whose fingerprint is new or differs from the last poll."""
    return sorted(lang for lang, fp in current.items() if previous.get(lang) != fp)


@sensor(asset_selection=LANGUAGE_ASSETS, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def git_push_sensor(context: SensorEvaluationContext):
    """Requests a run per language whose files changed since the last poll; adds new languages as partitions."""
    try:
        current = language_fingerprints()
    except (ConfigError, RepoError) as exc:
        return SkipReason(str(exc))
    previous = json.loads(context.cursor) if context.cursor else {}
    changed = changed_languages(previous, current)
    known = set(context.instance.get_dynamic_partitions(language_partitions.name))
    new = sorted(set(current) - known)
    if not changed and not new:
        return SkipReason("No language's files changed since the last poll.")
    return SensorResult(
        run_requests=[RunRequest(partition_key=lang, run_key=f"{lang}:{current[lang]}") for lang in changed],
        dynamic_partitions_requests=[language_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps(current, sort_keys=True),
    )
