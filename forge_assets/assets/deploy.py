"""Stage 8: deployment, the language's GGUF served under <tag_prefix>-<language>:<version>."""

import json

from dagster import AssetExecutionContext, MetadataValue, asset

from forge_assets.artifacts import input_key
from forge_assets.assets.common import gated_adapter, materialized
from forge_assets.assets.export import gguf_file
from forge_assets.deploy import llama_server, ollama_target
from forge_assets.deploy.ports import port_for
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource

CODE_VERSION = "1"


@asset(partitions_def=language_partitions, group_name="deploy", deps=["gguf", "eval_scores"], code_version=CODE_VERSION)
def deployment(context: AssetExecutionContext, forge: ForgeResource):
    """The served model tag for one language and the endpoint that answers it."""
    cfg = forge.load()
    store = forge.store(cfg)
    language, d = context.partition_key, cfg.deploy
    model = store.require("gguf", language)
    # The exact adapter and scores this GGUF was made from must pass the gate under today's limit.
    gated_adapter(store, language, cfg.deploy.max_perplexity_ratio, eval_version=model.manifest()["inputs"].get("eval_scores"))
    tag = f"{d.tag_prefix}-{language}:{model.version[:12]}"
    state_dir = store.folder("deployment", language)
    key = input_key(gguf=model.version, deploy=d.model_dump(), code=CODE_VERSION)
    # Reused only while the stable endpoint really answers with this tag (a dead server is redeployed).
    if (art := store.reusable("deployment", language, key)) is not None and (d.target == "ollama" or llama_server.serving(state_dir, tag)):
        context.log.info(f"{tag} is already deployed and answering; nothing to do.")
        return materialized(art, _figures(json.loads((art.path / "deployment.json").read_text())), reused=True)
    if d.target == "llama-server":
        state = llama_server.deploy(gguf_file(model.path), tag, d.host, port_for(store.root, language, d.port), state_dir)
        record = {"target": d.target, "tag": tag, "endpoint": state["endpoint"], "gguf": model.version, "smoke": state["smoke"]}
    else:
        state = ollama_target.deploy(gguf_file(model.path), tag, model.path, d.ollama_host, latest_tag=f"{d.tag_prefix}-{language}:latest")
        record = {"target": d.target, "tag": tag, "endpoint": state["endpoint"], "gguf": model.version, "smoke": state["smoke"], "latest_tag": state["latest_tag"]}
    with store.write("deployment", language, {"input_key": key, "inputs": {"gguf": model.version}}) as out:  # promoted: it is serving
        (out.path / "deployment.json").write_text(json.dumps({k: v for k, v in record.items() if k != "smoke"}, indent=2, sort_keys=True))
    return materialized(out.artifact, _figures(record))


def _figures(record: dict) -> dict:
    figures = {"target": record["target"], "tag": record["tag"], "endpoint": MetadataValue.url(record["endpoint"]), "gguf_version": record["gguf"]}
    if "smoke" in record:
        figures["smoke_reply"] = record["smoke"].get("reply", "")
    return figures
