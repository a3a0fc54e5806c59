"""Stage 6: eval_scores, the base model, base + candidate adapter and base + the served adapter (the champion, when
one exists for the same base) scored alike on the language's held-out (test) split, the newest changes.

Perplexity per sample kind, FIM exact match and edit similarity on AST-chosen cases, CodeBLEU on instruction
and commit answers, and HumanEval pass@1 run in the sandbox (evaluation/scores.py, in its own process).

The eval gates of forge.yaml's `gates:` block are blocking checks on this asset, judged on the very scores
just computed: if all pass, the scores and the adapter they judge are promoted; if any fails, both stay
candidates and the failed check stops the run, so nothing downstream runs (and `gguf` / `deployment`
re-judge and refuse them when run on their own). `not_worse_than_served` keeps a candidate worse than the
champion a candidate. Each version writes report.md, the validation report (evaluation/report.py).
"""

import json
import os

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, MetadataValue, asset

from forge_assets.artifacts import MANIFEST, ArtifactError, input_key
from forge_assets.assets.common import materialized
from forge_assets.assets.isolation import run_step
from forge_assets.evaluation.champion import resolve_champion
from forge_assets.evaluation.gate import EVAL_GATES, judge_eval
from forge_assets.evaluation.report import REPORT, validation_report
from forge_assets.evaluation.scores import humaneval_count, markdown_table
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.tracking import record_eval
from forge_assets.training.base_model import model_folder

CODE_VERSION = "4"  # 4: the champion scored too (paired comparison), report.md; 3: FIM in the base's own tokens, phase seconds
GATE = EVAL_GATES[0]  # adapter_beats_base, the perplexity gate
_DESCRIPTIONS = {
    "adapter_beats_base": "Blocks an adapter whose held-out perplexity exceeds gates.max_perplexity_ratio times the base model's.",
    "fim_not_worse_than_base": "Blocks an adapter whose FIM exact match or edit similarity is worse than the base model's (gates.fim_not_worse).",
    "humaneval_no_regression": "Blocks an adapter whose HumanEval pass@1 falls more than gates.max_humaneval_regression_points below the base's.",
    "not_worse_than_served": "Blocks a candidate worse than the served (promoted) adapter on the same test split: perplexity per kind, FIM "
                             "or HumanEval beyond gates.served_tolerance and 2 standard errors (gates.not_worse_than_served).",
}


@asset(partitions_def=language_partitions, group_name="evaluation", deps=["adapter", "dataset", "base_model"], code_version=CODE_VERSION,
       check_specs=[AssetCheckSpec(name, asset="eval_scores", blocking=True, description=_DESCRIPTIONS[name]) for name in EVAL_GATES])
def eval_scores(context: AssetExecutionContext, forge: ForgeResource):
    """Perplexity per kind, FIM, CodeBLEU and HumanEval pass@1 of the base model vs the adapter on held-out code."""
    cfg = forge.load()
    store = forge.store(cfg)
    language = context.partition_key
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
                    eval={k: v for k, v in ev.items() if k not in ("extra_quantizations", "gguf_windows", "gguf_window_tokens")},
                    code=CODE_VERSION, champion=champion.version if champion else None)
    reused = (art := store.reusable("eval_scores", language, key)) is not None
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
    else:
        store.mark_candidate(art)
    scores = json.loads((art.path / "scores.json").read_text())
    verdicts = judge_eval(scores, cfg.gates)
    record_gates(art, verdicts)
    report = validation_report(scores, verdicts, language=language, candidate=ad.version, base=base.version, dataset=data.version,
                               champion=scores.get("champion_version"), champion_reason=scores.get("champion_skipped", no_champion),
                               commits=_commits(art), test_since=(data.manifest().get("stats") or {}).get("split", {}).get("test_since"))
    write_beside(art, REPORT, report)
    passed = all(v.passed for v in verdicts)
    for v in verdicts:
        if v.skipped:
            context.log.warning(f"gate {v.name} {v.message}")
    if passed:
        store.promote(art)
        store.promote(ad)
        context.log.info(" ".join(v.message for v in verdicts) + f" Promoted adapter {ad.version} and eval_scores {art.version}.")
    else:
        for v in verdicts:
            if not v.passed:
                context.log.error(f"gate {v.name} failed: {v.message}")
    record_eval(cfg, language, ad.version, art.version, scores, report, context.run.run_id, log=context.log.warning)  # tracking: mlflow
    checks = [AssetCheckResult(check_name=v.name, passed=v.passed, severity=AssetCheckSeverity.ERROR, description=v.message,
                               metadata={**{k: float(x) for k, x in v.figures.items() if isinstance(x, (int, float)) and not isinstance(x, bool)},
                                         "adapter_version": ad.version, "eval_version": art.version, **({"skipped": True} if v.skipped else {})})
              for v in verdicts]
    return materialized(art, {**_figures(scores), "scores_table": MetadataValue.md(markdown_table(scores)), "promoted": passed,
                              "report": MetadataValue.md(report)}, reused=reused, check_results=checks)


def _commits(art) -> list[str]:
    try:
        return json.loads((art.path / "test_commits.json").read_text())
    except (OSError, ValueError):
        return []  # a version written before the report existed


def write_beside(art, name: str, text: str) -> None:
    """A derived file (the report: it depends on today's gate settings) written atomically into the version's folder,
    outside its content hash, as record_gates writes the manifest."""
    path = art.path / name
    tmp = path.with_name(f".tmp-{os.getpid()}-{name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_gates(art, verdicts) -> None:
    """Write the gate verdicts into the version's manifest (not part of its content hash), for `forge status` and `forge history`."""
    path = art.path / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["gates"] = [{"name": v.name, "passed": v.passed, "message": v.message, **({"skipped": True} if v.skipped else {})} for v in verdicts]
    tmp = path.with_name(f".tmp-{os.getpid()}-{MANIFEST}")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _figures(scores: dict) -> dict:
    # Numbers become MetadataValue floats, which the UI plots over time on the Plots tab.
    return {k: MetadataValue.float(float(v)) if isinstance(v, float) else v for k, v in scores.items() if v is not None}
