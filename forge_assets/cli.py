"""The `forge` command: run the main job for every configured language, and stop or list deployments."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _instance():
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("data/dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()


def run(languages: list[str] | None) -> int:
    """Materialize the whole chain (base_model, then each language's partition); one language's failure does not stop the others."""
    from forge_assets.config import load_config
    from forge_assets.definitions import defs
    from forge_assets.partitions import language_partitions
    from forge_assets.runs import fail_stale_runs, owner_tags
    from forge_assets.sensors import language_fingerprints

    cfg = load_config()
    wanted = languages or cfg.languages or sorted(language_fingerprints())
    if not wanted:
        print("forge: the configured repositories hold no source files of a known language; nothing to train.", file=sys.stderr)
        return 1
    instance = _instance()
    for run_id in fail_stale_runs(instance):
        print(f"forge: run {run_id} was left STARTED by a process that is gone; marked it failed.")
    known = set(instance.get_dynamic_partitions(language_partitions.name))
    instance.add_dynamic_partitions(language_partitions.name, [lang for lang in wanted if lang not in known])
    job = defs.get_job_def("forge")
    failures: dict[str, list[dict]] = {}
    for i, lang in enumerate(wanted):
        print(f"forge: materializing the `{lang}` chain (DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
        try:
            result = job.execute_in_process(partition_key=lang, instance=instance, raise_on_error=False, tags=owner_tags())
        except KeyboardInterrupt:
            return _interrupted(wanted[i:])
        if _was_interrupted(result):
            return _interrupted(wanted[i:])
        if not result.success:
            failures[lang] = failure_summary(result)
    status(wanted)
    if failures:
        print(_failure_block(failures), file=sys.stderr)
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


def _split_fix(text: str) -> tuple[str, str]:
    cause, sep, fix = text.partition("Fix:")
    return cause.strip(), (fix.strip() if sep else "see the run's log (dagster dev, or the output above).")


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
        cause, fix = _split_fix(text)
        out.append({"step": step, "cause": cause, "fix": fix})
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            cause, fix = _split_fix(ev.description or f"check {ev.check_name} failed")
            out.append({"step": f"{ev.asset_key.to_user_string()} check {ev.check_name}", "cause": cause, "fix": fix})
    return out


def _failure_block(failures: dict[str, list[dict]]) -> str:
    lines = [f"forge: the run failed for {', '.join(failures)}. Promoted artifacts and deployments are untouched."]
    for lang, items in failures.items():
        for item in items or [{"step": "?", "cause": "the run failed without a step failure", "fix": "see the run's log."}]:
            lines += [f"  [{lang}] step: {item['step']}", f"  [{lang}] cause: {item['cause']}", f"  [{lang}] fix: {item['fix']}"]
    return "\n".join(lines)


def gc(keep: int, dry_run: bool = False) -> int:
    """Remove old artifact versions that are neither promoted, candidates, deployed, among the newest `keep`, nor inputs of those."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    protect = set()
    for lang_dir in (store.root / "deployment").glob("*"):
        dep = store.promoted("deployment", lang_dir.name)
        if dep is not None:
            protect |= {("deployment", lang_dir.name, dep.version)}
    removed = store.gc(keep, protect=protect, dry_run=dry_run)
    for art in removed:
        print(f"forge gc: {'would remove' if dry_run else 'removed'} {art.asset}/{art.language}/{art.version}")
    print(f"forge gc: {len(removed)} version(s) {'to remove' if dry_run else 'removed'}; kept the newest {keep} of each, and everything promoted or deployed.")
    return 0


def status(languages: list[str] | None = None) -> int:
    """Print each language's latest artifact versions and deployment, checking the endpoint over HTTP."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy import llama_server, ollama_target

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    langs = languages or sorted({p.name for p in (store.root / "dataset").glob("*") if p.is_dir()}
                                | {p.parent.name for p in (store.root / "deployment").glob(f"*/{llama_server.STATE}")})
    for lang in langs:
        row = {asset: (a.version if (a := store.promoted(asset, lang)) else None)
               for asset in ("repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf")}
        dep = store.promoted("deployment", lang)
        record = json.loads((dep.path / "deployment.json").read_text()) if dep else None
        if record:
            row["deployment"] = record
        state_dir = store.folder("deployment", lang)
        if record and record.get("target") == "ollama":
            row["health"] = ollama_target.health(record["endpoint"], record["tag"])["health"]
        elif record or (state_dir / llama_server.STATE).is_file():
            h = llama_server.health(state_dir)
            row["health"] = h["health"]
            if h["tag"] and record and h["tag"] != record.get("tag"):
                row["serving"] = {"tag": h["tag"], "endpoint": h["endpoint"]}
        scores = store.promoted("eval_scores", lang)
        if scores:
            s = json.loads((scores.path / "scores.json").read_text())
            row["perplexity"] = {"base": s["base_perplexity"], "adapter": s["adapter_perplexity"]}
        print(json.dumps({"language": lang, **row}, indent=2))
    return 0


def stop(languages: list[str] | None) -> int:
    """Stop the routers and llama.cpp servers Forge started (all, or the named languages').

    Only processes that still match what Forge recorded (pid, start time, command line) are signalled; a dead
    or reused pid just clears the record.
    """
    from forge_assets.config import load_config
    from forge_assets.deploy import llama_server

    cfg = load_config()
    root = cfg.artifact_path / "deployment"
    langs = languages or sorted(p.name for p in root.glob("*") if (p / llama_server.STATE).is_file())
    for lang in langs:
        stopped = llama_server.stop(root / lang)
        if stopped is None:
            print(f"forge: {lang}: no llama.cpp deployment recorded; nothing to stop")
            continue
        print(f"forge: {lang}: {stopped['tag']} on {stopped['endpoint']}: " + "; ".join(stopped["messages"]) + "; record cleared")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge", description="Forge: per-language fine-tuned code models as Dagster assets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="materialize every asset for each language (the main job)")
    p_run.add_argument("--language", action="append", help="only this language (repeatable)")
    p_status = sub.add_parser("status", help="show the latest artifact versions and deployments, and whether each endpoint answers")
    p_status.add_argument("--language", action="append")
    p_stop = sub.add_parser("stop", help="stop the routers and llama.cpp servers Forge started (never another process)")
    p_stop.add_argument("--language", action="append")
    p_gc = sub.add_parser("gc", help="remove old artifact versions that are neither promoted nor deployed")
    p_gc.add_argument("--keep", type=int, default=3, help="newest versions to keep per asset and language besides promoted ones (default 3)")
    p_gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = parser.parse_args(argv)
    from forge_assets.config import ConfigError

    try:
        if args.command == "gc":
            return gc(args.keep, args.dry_run)
        return {"run": run, "status": status, "stop": stop}[args.command](args.language)
    except ConfigError as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
