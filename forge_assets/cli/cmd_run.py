"""`forge run`: materialize the whole chain for each language, then show the status; a failure ends in its step, cause and fix."""

from __future__ import annotations

import os
import sys

from forge_assets.cli.common import instance, split_fix


def run(languages: list[str] | None) -> int:
    """Materialize the whole chain (base_model, then each language's partition); one language's failure does not stop the others."""
    from forge_assets.cli.cmd_status import status
    from forge_assets.config import load_config
    from forge_assets.definitions import defs
    from forge_assets.partitions import add_languages
    from forge_assets.runs import fail_stale_runs, owner_tags
    from forge_assets.sensors import language_fingerprints

    cfg = load_config()
    wanted = languages or cfg.languages or sorted(language_fingerprints())
    if not wanted:
        print("forge: the configured repositories hold no source files of a known language; nothing to train.", file=sys.stderr)
        return 1
    dagster = instance()
    for run_id in fail_stale_runs(dagster):
        print(f"forge: run {run_id} was left STARTED by a process that is gone; marked it failed.")
    add_languages(dagster, wanted, "forge run")
    job = defs.resolve_job_def("forge")  # (get_job_def warns: the job is an asset job, resolved against the asset graph)
    failures: dict[str, list[dict]] = {}
    for i, lang in enumerate(wanted):
        print(f"forge: materializing the `{lang}` chain (DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
        try:
            result = job.execute_in_process(partition_key=lang, instance=dagster, raise_on_error=False, tags=owner_tags())
        except KeyboardInterrupt:
            return _interrupted(wanted[i:])
        if _was_interrupted(result):
            return _interrupted(wanted[i:])
        if not result.success:
            failures[lang] = failure_summary(result)
    status(wanted, endpoint=True)
    if cfg.deploy.approval == "manual":  # said last: what waits for a person, and how to decide
        from forge_assets.artifacts import ArtifactStore
        from forge_assets.cli.cmd_approve import awaiting_lines

        for line in awaiting_lines(ArtifactStore(cfg.artifact_path), cfg, wanted):
            print(line)
    if failures:
        print(failure_block(failures), file=sys.stderr)
        return 1
    return 0


def _interrupted(left: list[str]) -> int:
    print(f"forge: interrupted; stopped with {', '.join(left)} not finished. Promoted artifacts and deployments are as they were.", file=sys.stderr)
    return 130


def _errors(result):
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            yield ev.step_key, ev.step_failure_data


def _was_interrupted(result) -> bool:
    for _, data in _errors(result):
        err = data.error
        while err is not None:
            if err.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                return True
            err = err.cause
    return False


def failure_summary(result) -> list[dict]:
    """One entry per failed step or failed blocking check: the step, the cause and the fix (no stack trace)."""
    out = []
    for step, data in _errors(result):
        if data.user_failure_data is not None and data.user_failure_data.description:
            text = data.user_failure_data.description
        else:
            err = data.error
            while err is not None and err.cause is not None and err.cls_name.startswith("Dagster"):
                err = err.cause  # the user's exception under Dagster's wrapper
            text = (err.message if err else "unknown error").strip()
            text = text.split(": ", 1)[1] if text.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum() and ": " in text else text
        cause, fix = split_fix(text)
        out.append({"step": step, "cause": cause, "fix": fix})
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            cause, fix = split_fix(ev.description or f"check {ev.check_name} failed")
            out.append({"step": f"{ev.asset_key.to_user_string()} check {ev.check_name}", "cause": cause, "fix": fix})
    return out


def failure_block(failures: dict[str, list[dict]]) -> str:
    """What `forge run` prints last when languages failed: each failed step's cause and fix, by language."""
    lines = [f"forge: the run failed for {', '.join(failures)}. Promoted artifacts and deployments are untouched."]
    for lang, items in failures.items():
        for item in items or [{"step": "?", "cause": "the run failed without a step failure", "fix": "see the run's log."}]:
            lines += [f"  [{lang}] step: {item['step']}", f"  [{lang}] cause: {item['cause']}", f"  [{lang}] fix: {item['fix']}"]
    return "\n".join(lines)
