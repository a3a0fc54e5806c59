"""Stage 6: eval_scores, held-out perplexity (and FIM exact match) of base vs adapter per language."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, MetadataValue, asset, asset_check

from forge_assets.artifacts import input_key
from forge_assets.assets.common import materialized
from forge_assets.evaluation.scores import evaluate
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.training.base_model import model_folder

CODE_VERSION = "1"


@asset(partitions_def=language_partitions, group_name="evaluation", deps=["adapter", "dataset", "base_model"], code_version=CODE_VERSION)
def eval_scores(context: AssetExecutionContext, forge: ForgeResource):
    """How much the adapter lowers perplexity on the language's held-out (test) samples."""
    cfg = forge.load()
    store = forge.store(cfg)
    language = context.partition_key
    ad, data, base = store.require("adapter", language), store.require("dataset", language), store.require("base_model", "all")
    key = input_key(adapter=ad.version, dataset=data.version, base=base.version, seq_len=cfg.training.seq_len, code=CODE_VERSION)
    if (art := store.reusable("eval_scores", language, key)) is not None:
        return materialized(art, _figures(json.loads((art.path / "scores.json").read_text())), reused=True)
    scores = evaluate(model_folder(base.path), ad.path, data.path, cfg.training.seq_len)
    with store.write("eval_scores", language, {"input_key": key, "inputs": {"adapter": ad.version, "dataset": data.version, "base_model": base.version}}) as out:
        (out.path / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
    return materialized(out.artifact, _figures(scores))


def _figures(scores: dict) -> dict:
    # Numbers become MetadataValue floats, which the UI plots over time on the Plots tab.
    return {k: MetadataValue.float(float(v)) if isinstance(v, float) else v for k, v in scores.items() if v is not None}


@asset_check(asset=eval_scores, blocking=True, partitions_def=language_partitions)
def adapter_beats_base(context, forge: ForgeResource) -> AssetCheckResult:
    """Blocks export and deploy of an adapter that does worse than the base model on held-out code."""
    cfg = forge.load()
    scores = json.loads((forge.store(cfg).require("eval_scores", context.partition_key).path / "scores.json").read_text())
    ratio, limit = scores["perplexity_ratio"], cfg.deploy.max_perplexity_ratio
    return AssetCheckResult(
        passed=bool(ratio <= limit),
        severity=AssetCheckSeverity.ERROR,
        description=None if ratio <= limit else (
            f"The adapter's held-out perplexity is {ratio:.3f}x the base model's (limit {limit}), so it is not exported or deployed. "
            "Fix: train longer or on more data, or raise deploy.max_perplexity_ratio in forge.yaml."),
        metadata={"perplexity_ratio": float(ratio), "limit": float(limit)},
    )
