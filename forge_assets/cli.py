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
    """Materialize the whole chain (base_model, then each language's partition) in this process."""
    from forge_assets.config import load_config
    from forge_assets.definitions import defs
    from forge_assets.partitions import language_partitions
    from forge_assets.sensors import language_fingerprints

    cfg = load_config()
    wanted = languages or cfg.languages or sorted(language_fingerprints())
    if not wanted:
        print("forge: the configured repositories hold no source files of a known language; nothing to train.", file=sys.stderr)
        return 1
    instance = _instance()
    known = set(instance.get_dynamic_partitions(language_partitions.name))
    instance.add_dynamic_partitions(language_partitions.name, [lang for lang in wanted if lang not in known])
    job = defs.get_job_def("forge")
    failed = []
    for lang in wanted:
        print(f"forge: materializing the `{lang}` chain (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
        result = job.execute_in_process(partition_key=lang, instance=instance, raise_on_error=False)
        if not result.success:
            failed.append(lang)
    status(wanted)
    if failed:
        print(f"forge: the run failed for {', '.join(failed)}; see the errors above or in `dagster dev`. Earlier good artifacts are untouched.", file=sys.stderr)
        return 1
    return 0


def status(languages: list[str] | None = None) -> int:
    """Print each language's latest artifact versions and deployment."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    langs = languages or sorted(p.name for p in (store.root / "dataset").glob("*") if p.is_dir())
    for lang in langs:
        row = {asset: (a.version if (a := store.latest(asset, lang)) else None)
               for asset in ("repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf")}
        dep = store.latest("deployment", lang)
        if dep:
            row["deployment"] = json.loads((dep.path / "deployment.json").read_text())
        scores = store.latest("eval_scores", lang)
        if scores:
            s = json.loads((scores.path / "scores.json").read_text())
            row["perplexity"] = {"base": s["base_perplexity"], "adapter": s["adapter_perplexity"]}
        print(json.dumps({"language": lang, **row}, indent=2))
    return 0


def stop(languages: list[str] | None) -> int:
    """Stop the llama.cpp servers Forge started (all, or the named languages')."""
    from forge_assets.config import load_config
    from forge_assets.deploy import llama_server

    cfg = load_config()
    root = cfg.artifact_path / "deployment"
    langs = languages or sorted(p.name for p in root.glob("*") if (p / llama_server.STATE).is_file())
    for lang in langs:
        stopped = llama_server.stop(root / lang)
        print(f"forge: {lang}: " + (f"stopped {stopped['tag']} (pid {stopped['pid']})" if stopped else "no server running"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge", description="Forge: per-language fine-tuned code models as Dagster assets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="materialize every asset for each language (the main job)")
    p_run.add_argument("--language", action="append", help="only this language (repeatable)")
    p_status = sub.add_parser("status", help="show the latest artifact versions and deployments")
    p_status.add_argument("--language", action="append")
    p_stop = sub.add_parser("stop", help="stop the llama.cpp servers Forge started")
    p_stop.add_argument("--language", action="append")
    args = parser.parse_args(argv)
    from forge_assets.config import ConfigError

    try:
        return {"run": run, "status": status, "stop": stop}[args.command](args.language)
    except ConfigError as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
