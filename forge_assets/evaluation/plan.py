"""What the `eval_scores` asset scores, decided from the config and the store: the candidate adapter, the exact
dataset and base model it was trained on, the champion (or why none), the input key, the manifest and the
evaluate step's arguments; then the files a scoring writes and what the gate verdicts settle.

The asset only wires this: `eval_plan`, reuse or run the step (`write_scores` inside the write), `settle_eval`.
"""

import json
from dataclasses import dataclass

from forge_assets.artifacts import Artifact, ArtifactError, ArtifactStore, input_key
from forge_assets.evaluation.champion import resolve_champion
from forge_assets.evaluation.gate import Verdict, judge_eval
from forge_assets.evaluation.report import REPORT, validation_report
from forge_assets.evaluation.scores import humaneval_count, markdown_table
from forge_assets.promotion import Decision, settle
from forge_assets.tracking import record_eval
from forge_assets.training.base_model import model_folder

CODE_VERSION = "4"  # 4: the champion scored too (paired comparison), report.md; 3: FIM in the base's own tokens, phase seconds
NOT_IN_KEY = ("extra_quantizations", "gguf_windows", "gguf_window_tokens")  # eval settings only `gguf` reads


@dataclass
class EvalPlan:
    language: str
    adapter: Artifact
    dataset: Artifact
    base: Artifact
    champion: Artifact | None
    no_champion: str | None  # why there is no champion
    key: str
    manifest: dict
    args: dict  # the evaluate step's arguments

    @property
    def champion_note(self) -> str:
        return f"champion: the served adapter {self.champion.version}" if self.champion else f"champion: none ({self.no_champion})"


@dataclass
class EvalOutcome:
    scores: dict
    verdicts: list[Verdict]
    report: str
    decision: Decision


def eval_plan(cfg, store: ArtifactStore, language: str) -> EvalPlan:
    """Resolve the candidate adapter, its dataset and base model, and the champion into a plan."""
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
    manifest = {"input_key": key, "inputs": {"adapter": ad.version, "dataset": data.version, "base_model": base.version,
                                             **({"champion": champion.version} if champion else {})}}
    args = {"base": str(model_folder(base.path)), "adapter": str(ad.path), "champion": str(champion.path) if champion else None,
            "dataset": str(data.path), "seq_len": cfg.training.seq_len, "eval": ev, "language": language}
    return EvalPlan(language, ad, data, base, champion, no_champion, key, manifest, args)


def write_scores(plan: EvalPlan, folder, scores: dict) -> None:
    """The evaluate step's scores into a new eval_scores version: scores.json, scores.md and test_commits.json."""
    commits = scores.pop("test_commit_list", [])
    scores |= {"champion_version": plan.champion.version} if plan.champion else {"champion_skipped": plan.no_champion}
    (folder / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
    (folder / "scores.md").write_text(markdown_table(scores) + "\n")
    (folder / "test_commits.json").write_text(json.dumps(commits))


def settle_eval(cfg, store: ArtifactStore, plan: EvalPlan, art: Artifact, run_id: str | None, log) -> EvalOutcome:
    """Judge an eval_scores version under `gates:`, write its report, promote it with its adapter if all pass, log
    what the gates decided (`log`: a logger's info / warning / error) and record the scores (tracking: mlflow)."""
    scores = json.loads((art.path / "scores.json").read_text())
    verdicts = judge_eval(scores, cfg.gates)
    data = plan.dataset
    report = validation_report(scores, verdicts, language=plan.language, candidate=plan.adapter.version, base=plan.base.version,
                               dataset=data.version, champion=scores.get("champion_version"),
                               champion_reason=scores.get("champion_skipped", plan.no_champion), commits=scored_commits(art),
                               test_since=(data.manifest().get("stats") or {}).get("split", {}).get("test_since"))
    decision = settle(store, art, plan.adapter, verdicts, report, REPORT)  # promotion policy: promotion.py
    for v in decision.skipped:
        log.warning(f"gate {v.name} {v.message}")
    if decision.promoted:
        log.info(f"{decision.message} Promoted adapter {plan.adapter.version} and eval_scores {art.version}.")
    for v in decision.failed:
        log.error(f"gate {v.name} failed: {v.message}")
    record_eval(cfg, plan.language, plan.adapter.version, art.version, scores, report, run_id, log=log.warning)  # tracking: mlflow
    return EvalOutcome(scores, verdicts, report, decision)


def scored_commits(art: Artifact) -> list[str]:
    try:
        return json.loads((art.path / "test_commits.json").read_text())
    except (OSError, ValueError):
        return []  # a version written before the report existed
