"""Stage 8: deployment, the language's GGUF served under <tag_prefix>-<language>:<version>."""

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from forge_assets.assets.common import gated_adapter, materialized
from forge_assets.deploy import approval
from forge_assets.deploy.history import deployed
from forge_assets.evaluation.gate import judge_gguf
from forge_assets.deploy.service import CODE_VERSION, deploy_gguf
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource


@asset(partitions_def=language_partitions, group_name="deploy", deps=["gguf", "eval_scores"], code_version=CODE_VERSION)
def deployment(context: AssetExecutionContext, forge: ForgeResource):
    """The served model tag for one language and the endpoint that answers it."""
    cfg, store, language = forge.partition(context)
    model = store.require("gguf", language)
    # The exact adapter and scores this GGUF was made from must pass the eval gates under today's `gates:`, and the file its own.
    gated_adapter(store, language, cfg.gates, eval_version=model.manifest()["inputs"].get("eval_scores"))
    verdict = judge_gguf(model.manifest().get("figures", {}), cfg.gates)
    if not verdict.passed:
        raise Failure(description=f"gguf {model.version} for `{language}` does not pass {verdict.name}: {verdict.message}")
    if cfg.deploy.approval == "manual" and approval.automated(context.run.tags):
        # Not served until a person approves it (`forge approve`, or materializing this partition from the UI).
        serving = deployed(store, language)
        if serving is None or serving[1].get("gguf") != model.version:
            cand = approval.hold(store, cfg, language, model)
            context.log.info(f"{cand.tag} passed every gate and awaits approval (deploy.approval: manual); "
                             f"{cand.serving or 'nothing'} keeps serving. Approve: forge approve --language {language}")
            return MaterializeResult(metadata={
                "awaiting_approval": True, "candidate": cand.tag, "gguf_version": model.version,
                "serving": cand.serving or "nothing yet", "approve": f"forge approve --language {language}",
                **({"validation_report": MetadataValue.path(str(cand.report))} if cand.report else {})})
    waiting = approval.pending(store, cfg, language) if cfg.deploy.approval == "manual" else None
    # Served (or reused while it answers), recorded as the deployment artifact and in deployment/<language>/history.jsonl.
    art, record, reused = deploy_gguf(store, cfg, language, model, log=context.log.info)
    if waiting is not None and waiting.version == model.version:  # a person materialized this partition: the approval
        approval.record_approval(store, language, model.version, record["tag"], waiting, by=f"dagster run {context.run_id[:8]}")
    return materialized(art, _figures(record), reused=reused)


def _figures(record: dict) -> dict:
    figures = {"target": record["target"], "tag": record["tag"], "endpoint": MetadataValue.url(record["endpoint"]), "gguf_version": record["gguf"]}
    if "smoke" in record:
        figures["smoke_reply"] = record["smoke"].get("reply", "")
        if isinstance(record["smoke"].get("fim"), dict):
            figures["smoke_fim_middle"] = record["smoke"]["fim"].get("middle", "")
    if record.get("tags"):
        figures["endpoint_tags"] = ", ".join(record["tags"])  # every language served by the same one process
        figures["context"] = record.get("context")
        figures["served_as"] = "base + LoRA" if record.get("unmerged") else "merged GGUF"
    return figures
