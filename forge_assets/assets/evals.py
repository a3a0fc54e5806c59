"""Stage 6: eval_scores, the base model, base + candidate adapter and base + the served adapter (the champion, when
one exists for the same base) scored alike on the language's held-out (test) split, the newest changes.

Perplexity per sample kind, FIM exact match and edit similarity on AST-chosen cases, CodeBLEU on instruction
and commit answers, and HumanEval pass@1 run in the sandbox (evaluation/scores.py, in its own process).

The eval gates of forge.yaml's `gates:` block are blocking checks on this asset, judged on the very scores
just computed: if all pass, the scores and the adapter they judge are promoted; if any fails, both stay
candidates and the failed check stops the run, so nothing downstream runs (and `gguf` / `deployment`
re-judge and refuse them when run on their own). `not_worse_than_served` keeps a candidate worse than the
champion a candidate. Each version writes report.md, the validation report (evaluation/report.py).

The gates and their check descriptions come from the registry (evaluation/metrics/); what the verdicts decide, the
manifest's `gates` record and the report's atomic write are the promotion policy (forge_assets/promotion.py).
"""

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, MetadataValue, asset

from forge_assets.assets.common import materialized, reuse
from forge_assets.assets.isolation import run_step
from forge_assets.evaluation import metrics
from forge_assets.evaluation.plan import CODE_VERSION, eval_plan, settle_eval, write_scores
from forge_assets.evaluation.scores import markdown_table
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource


@asset(partitions_def=language_partitions, group_name="evaluation", deps=["adapter", "dataset", "base_model"], code_version=CODE_VERSION,
       check_specs=[AssetCheckSpec(name, asset="eval_scores", blocking=True, description=text)
                    for name, text in metrics.descriptions("eval_scores").items()])
def eval_scores(context: AssetExecutionContext, forge: ForgeResource):
    """Perplexity per kind, FIM, CodeBLEU and HumanEval pass@1 of the base model vs the adapter on held-out code."""
    cfg, store, language = forge.partition(context)
    plan = eval_plan(cfg, store, language)  # adapter, dataset, base, champion, key, manifest, step arguments (evaluation/plan.py)
    reused = (art := reuse(context, store, "eval_scores", language, plan.key, candidate=True)) is not None
    if not reused:
        context.log.info(plan.champion_note)
        with store.workdir("eval") as work, store.write("eval_scores", language, plan.manifest, promote=False) as out:
            write_scores(plan, out.path, run_step(context, forge, "evaluate", plan.args, work))
        art = out.artifact
    # Judged, reported, promoted if all gates pass (promotion.py), logged and tracked (mlflow).
    done = settle_eval(cfg, store, plan, art, context.run.run_id, context.log)
    checks = [AssetCheckResult(check_name=v.name, passed=v.passed, severity=AssetCheckSeverity.ERROR, description=v.message,
                               metadata={**{k: float(x) for k, x in v.figures.items() if isinstance(x, (int, float)) and not isinstance(x, bool)},
                                         "adapter_version": plan.adapter.version, "eval_version": art.version, **({"skipped": True} if v.skipped else {})})
              for v in done.verdicts]
    return materialized(art, {**_figures(done.scores), "scores_table": MetadataValue.md(markdown_table(done.scores)), "promoted": done.decision.promoted,
                              "report": MetadataValue.md(done.report)}, reused=reused, check_results=checks)


def _figures(scores: dict) -> dict:
    # Numbers become MetadataValue floats, which the UI plots over time on the Plots tab.
    return {k: MetadataValue.float(float(v)) if isinstance(v, float) else v for k, v in scores.items() if v is not None}
