"""Stage 6: eval_scores, held-out perplexity (and FIM exact match) of base vs adapter per language.

The gate `adapter_beats_base` is judged here, on the very scores just computed: if it passes, the
scores and the adapter they judge are promoted; if not, both stay candidates and the blocking check
fails, so nothing downstream runs (and `gguf` / `deployment` refuse them when run on their own).
"""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, MetadataValue, asset

from forge_assets.artifacts import ArtifactError, input_key
from forge_assets.assets.common import materialized
from forge_assets.assets.isolation import run_step
from forge_assets.evaluation.gate import gate
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.training.base_model import model_folder

CODE_VERSION = "1"
GATE = "adapter_beats_base"


@asset(partitions_def=language_partitions, group_name="evaluation", deps=["adapter", "dataset", "base_model"], code_version=CODE_VERSION,
       check_specs=[AssetCheckSpec(GATE, asset="eval_scores", blocking=True,
                                   description="Blocks promotion, export and deploy of an adapter that does worse than the base model on held-out code.")])
def eval_scores(context: AssetExecutionContext, forge: ForgeResource):
    """How much the adapter lowers perplexity on the language's held-out (test) samples."""
    cfg = forge.load()
    store = forge.store(cfg)
    language = context.partition_key
    ad = store.candidate("adapter", language)
    if ad is None:
        raise ArtifactError(f"No `adapter` for `{language}` to evaluate. Fix: materialize `adapter` for `{language}` first.")
    # The exact dataset and base model this adapter was trained on, as its manifest records them.
    inputs = ad.manifest()["inputs"]
    data, base = store.get("dataset", language, inputs["dataset"]), store.get("base_model", "all", inputs["base_model"])
    key = input_key(adapter=ad.version, dataset=data.version, base=base.version, seq_len=cfg.training.seq_len, code=CODE_VERSION)
    reused = (art := store.reusable("eval_scores", language, key)) is not None
    if not reused:
        manifest = {"input_key": key, "inputs": {"adapter": ad.version, "dataset": data.version, "base_model": base.version}}
        with store.workdir("eval") as work, store.write("eval_scores", language, manifest, promote=False) as out:
            scores = run_step(context, forge, "evaluate", {"base": str(model_folder(base.path)), "adapter": str(ad.path),
                                                           "dataset": str(data.path), "seq_len": cfg.training.seq_len}, work)
            (out.path / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
        art = out.artifact
    else:
        store.mark_candidate(art)
    scores = json.loads((art.path / "scores.json").read_text())
    verdict = gate(scores, cfg.deploy.max_perplexity_ratio)
    if verdict.passed:
        store.promote(art)
        store.promote(ad)
        context.log.info(f"{verdict.message} Promoted adapter {ad.version} and eval_scores {art.version}.")
    else:
        context.log.error(verdict.message)
    check = AssetCheckResult(check_name=GATE, passed=verdict.passed, severity=AssetCheckSeverity.ERROR,
                             description=verdict.message, metadata={"perplexity_ratio": verdict.ratio, "limit": float(verdict.limit),
                                                                    "adapter_version": ad.version, "eval_version": art.version})
    return materialized(art, {**_figures(scores), "promoted": verdict.passed}, reused=reused, check_results=[check])


def _figures(scores: dict) -> dict:
    # Numbers become MetadataValue floats, which the UI plots over time on the Plots tab.
    return {k: MetadataValue.float(float(v)) if isinstance(v, float) else v for k, v in scores.items() if v is not None}
