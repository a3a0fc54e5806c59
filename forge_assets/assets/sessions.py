"""Stage 2: session_logs, a language's conversations from coding-agent session logs, scrubbed."""

import json

from dagster import AssetExecutionContext, asset

from forge_assets.assets.common import figures, materialized, md_table
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.sessions import collect


@asset(partitions_def=language_partitions, group_name="mining", code_version="1")
def session_logs(context: AssetExecutionContext, forge: ForgeResource):
    """Chat and code-change records for one language, from opencode (and other agents') sessions."""
    cfg, store, language = forge.partition(context)
    if not cfg.sessions:
        context.log.warning("No `sessions:` configured in forge.yaml; session_logs is empty.")
    records, stats, warnings = collect(cfg.sessions, cfg.resolve("."), language)
    for w in warnings:
        context.log.warning(w)
    if cfg.sessions and not records:
        context.log.warning(f"The configured session logs hold no `{language}` conversations.")
    with store.write("session_logs", language, {"sources": [s.model_dump(exclude_none=True) for s in cfg.sessions], "stats": stats}) as out:
        with open(out.path / "records.jsonl", "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    return materialized(out.artifact, {
        "records": len(records),
        **figures(stats),
        "redactions": md_table(stats.get("redactions", {}), "secret type"),
        "skipped_sources": len(stats.get("skipped", [])),
        "skipped": "\n".join(f"{s['source']}: {s['error']}" for s in stats.get("skipped", [])) or "none",
        "warnings": "\n".join(warnings) or "none",
    })
