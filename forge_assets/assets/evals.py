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

import json

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, MetadataValue, asset

from forge_assets.artifacts import ArtifactError, input_key
from forge_assets.assets.common import materialized, reuse
from forge_assets.assets.isolation import run_step
from forge_assets.evaluation import metrics
from forge_assets.evaluation.champion import resolve_champion
from forge_assets.evaluation.gate import EVAL_GATES, judge_eval
from forge_assets.evaluation.report import REPORT, validation_report
from forge_assets.evaluation.scores import humaneval_count, markdown_table
from forge_assets.partitions import language_partitions
from forge_assets.promotion import settle
from forge_assets.resources import ForgeResource
from forge_assets.tracking import record_eval
from forge_assets.training.base_model import model_folder

CODE_VERSION = "4"  # 4: the champion scored too (paired comparison), report.md; 3: FIM in the base's own tokens, phase seconds
GATE = EVAL_GATES[0]  # adapter_beats_base, the perplexity gate
NOT_IN_KEY = ("extra_quantizations", "gguf_windows", "gguf_window_tokens")  # eval settings only `gguf` reads


@asset(partitions_def=language_partitions, group_name="evaluation", deps=["adapter", "dataset", "base_model"], code_version=CODE_VERSION,
       check_specs=[AssetCheckSpec(name, asset="eval_scores", blocking=True, description=text)
                    for name, text in metrics.descriptions("eval_scores").items()])
def eval_scores(context: AssetExecutionContext, forge: ForgeResource):
    """Perplexity per kind, FIM, CodeBLEU and HumanEval pass@1 of the base model vs the adapter on held-out code."""
    cfg, store, language = forge.partition(context)
    ad = store.candidate("adapter", language)
    if ad is None:
        raise ArtifactError(f"No `adapter` for `{language}` to evaluate. Fix: materialize `adapter` for `{language}` first.")
    # The exact dataset and base model this adapter was trained on, as its manifest records them.
    inputs = ad.manifest()["inputs"]
    data, base = store.get("dataset", language, inputs["dataset"]), store.get("base_model", "all", inputs["base_model"])
    ev = cfg.eval.model_dump()
    ev["humaneval"]["problems"] = humaneval_count(cfg.eval.humaneval.problems)  # auto resolved here, so the key says what ran
    # The champion: the promoted adapter, when it was trained on the same base (evaluation/champion.py).
    champion, no_champion = resolve_champion(store, language, ad, base.version) if cfg.gates.not_worse_than_served else (None, "gates.not_worse_than_served is off")
    key = input_key(adapter=ad.version, dataset=data.version, base=base.version, seq_len=cfg.training.seq_len,
                    eval={k: v for k, v in ev.items() if k not in NOT_IN_KEY}, code=CODE_VERSION, champion=champion.version if champion else None)
    reused = (art := reuse(context, store, "eval_scores", language, key, candidate=True)) is not None
    if not reused:
        context.log.info(f"champion: the served adapter {champion.version}" if champion else f"champion: none ({no_champion})")
        manifest = {"input_key": key, "inputs": {"adapter": ad.version, "dataset": data.version, "base_model": base.version,
                                                 **({"champion": champion.version} if champion else {})}}
        with store.workdir("eval") as work, store.write("eval_scores", language, manifest, promote=False) as out:
            scores = run_step(context, forge, "evaluate", {"base": str(model_folder(base.path)), "adapter": str(ad.path),
                                                           "champion": str(champion.path) if champion else None,
                                                           "dataset": str(data.path), "seq_len": cfg.training.seq_len,
                                                           "eval": ev, "language": language}, work)
            commits = scores.pop("test_commit_list", [])
            scores |= {"champion_version": champion.version} if champion else {"champion_skipped": no_champion}
            (out.path / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
            (out.path / "scores.md").write_text(markdown_table(scores) + "\n")
            (out.path / "test_commits.json").write_text(json.dumps(commits))
        art = out.artifact
    scores = json.loads((art.path / "scores.json").read_text())
    verdicts = judge_eval(scores, cfg.gates)
    report = validation_report(scores, verdicts, language=language, candidate=ad.version, base=base.version, dataset=data.version,
                               champion=scores.get("champion_version"), champion_reason=scores.get("champion_skipped", no_champion),
                               commits=_commits(art), test_since=(data.manifest().get("stats") or {}).get("split", {}).get("test_since"))
    decision = settle(store, art, ad, verdicts, report, REPORT)  # promotion policy: promotion.py
    for v in decision.skipped:
        context.log.warning(f"gate {v.name} {v.message}")
    if decision.promoted:
        context.log.info(f"{decision.message} Promoted adapter {ad.version} and eval_scores {art.version}.")
    for v in decision.failed:
        context.log.error(f"gate {v.name} failed: {v.message}")
    record_eval(cfg, language, ad.version, art.version, scores, report, context.run.run_id, log=context.log.warning)  # tracking: mlflow
    checks = [AssetCheckResult(check_name=v.name, passed=v.passed, severity=AssetCheckSeverity.ERROR, description=v.message,
                               metadata={**{k: float(x) for k, x in v.figures.items() if isinstance(x, (int, float)) and not isinstance(x, bool)},
                                         "adapter_version": ad.version, "eval_version": art.version, **({"skipped": True} if v.skipped else {})})
              for v in verdicts]
    return materialized(art, {**_figures(scores), "scores_table": MetadataValue.md(markdown_table(scores)), "promoted": decision.promoted,
                              "report": MetadataValue.md(report)}, reused=reused, check_results=checks)


def _commits(art) -> list[str]:
    try:
        return json.loads((art.path / "test_commits.json").read_text())
    except (OSError, ValueError):
        return []  # a version written before the report existed


def _figures(scores: dict) -> dict:
    # Numbers become MetadataValue floats, which the UI plots over time on the Plots tab.
    return {k: MetadataValue.float(float(v)) if isinstance(v, float) else v for k, v in scores.items() if v is not None}
