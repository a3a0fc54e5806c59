"""The validation report of one eval_scores version: the candidate against the champion (the served adapter) and
the base model, per figure and per sample kind, the commits its test split covers, and each gate's verdict.

Plain Markdown, written beside scores.json as report.md; shown as the asset's metadata in the UI, listed by
`forge history`, and logged to MLflow when tracking is on. It is the pass/fail page a team approves.
"""

from __future__ import annotations

REPORT = "report.md"
MAX_COMMITS = 40  # listed by sha; the rest are counted


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _arrow(name: str, cand, other) -> str:
    """Which way the candidate moved against `other`: better, worse or equal (perplexity: lower is better)."""
    if not isinstance(cand, (int, float)) or not isinstance(other, (int, float)) or cand == other:
        return "=" if cand == other and cand is not None else ""
    lower = name.startswith("perplexity")
    return "better" if (cand < other) == lower else "worse"


def figure_rows(scores: dict) -> list[str]:
    """One row per figure that the base and the candidate both have: base | served | candidate | vs served | vs base."""
    rows = []
    keys = sorted(k.removeprefix("base_") for k in scores if k.startswith("base_")
                  and not k.startswith(("base_seconds", "base_humaneval_passed", "base_peak")))
    for name in keys:
        b, c, a = scores.get(f"base_{name}"), scores.get(f"champion_{name}"), scores.get(f"adapter_{name}")
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            continue
        rows.append(f"| {name} | {_fmt(b)} | {_fmt(c)} | {_fmt(a)} | {_arrow(name, a, c)} | {_arrow(name, a, b)} |")
    return rows


def paired_rows(scores: dict) -> list[str]:
    """The paired differences against the champion that `not_worse_than_served` judges."""
    rows = []
    for key in sorted(k for k in scores if k.startswith("served_") and "_delta" in k and not k.endswith("_se")):
        se = scores.get(f"{key}_se")
        rows.append(f"| {key.removeprefix('served_')} | {scores[key]:+.4f} | {_fmt(se)} |")
    return rows


def validation_report(scores: dict, verdicts: list, *, language: str, candidate: str, base: str, dataset: str,
                      champion: str | None, champion_reason: str | None, commits: list[str], test_since: str | None = None) -> str:
    """The report's Markdown."""
    passed = all(v.passed for v in verdicts)
    lines = [f"# Validation report: `{language}`, candidate adapter {candidate[:12]}", "",
             f"**Verdict: {'PASS: promoted' if passed else 'FAIL: stays a candidate; what is served does not change'}**", "",
             f"- candidate adapter: `{candidate}`",
             f"- served adapter (champion): `{champion}`" if champion else f"- served adapter (champion): none ({champion_reason})",
             f"- base model: `{base}`", f"- dataset: `{dataset}`",
             f"- scored on the `{scores.get('split', 'test')}` split: {scores.get('test_samples', '?')} samples"
             + (f", the newest changes (files touched since {test_since})" if test_since else ""), "",
             "## Gates", "", "| gate | verdict | message |", "|---|---|---|"]
    for v in verdicts:
        verdict = "not judged" if v.skipped else ("pass" if v.passed else "**FAIL**")
        lines.append(f"| {v.name} | {verdict} | {v.message.replace('|', '/')} |")
    lines += ["", "## Figures", "", "| figure | base | served | candidate | vs served | vs base |", "|---|---|---|---|---|---|",
              *(figure_rows(scores) or ["| (none) | | | | | |"])]
    if paired := paired_rows(scores):
        lines += ["", "## Candidate minus served, paired on the same units", "",
                  "Perplexity: mean log-perplexity difference per evaluation batch (positive is worse); FIM and HumanEval: per case "
                  "or problem (negative is worse).", "", "| figure | difference | standard error |", "|---|---|---|", *paired]
    shown = commits[:MAX_COMMITS]
    lines += ["", f"## Commits the test split covers ({len(commits)})", ""]
    lines += [", ".join(f"`{c[:12]}`" for c in shown) + (f", and {len(commits) - len(shown)} more" if len(commits) > len(shown) else "")
              if commits else "(none recorded: samples from sessions or an older dataset)"]
    return "\n".join(lines) + "\n"
