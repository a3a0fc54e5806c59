"""A language's evaluations, oldest first: each eval_scores version's candidate and champion adapters, its verdict
(the gates it failed, recorded in its manifest) and its validation report. `forge history` prints them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forge_assets.artifacts import ArtifactStore
from forge_assets.evaluation.report import REPORT


@dataclass(frozen=True)
class Evaluation:
    version: str
    created_at: str | None
    adapter: str | None  # the candidate adapter's version
    champion: str | None  # the served adapter it was judged against (None: there was none)
    failed: tuple[str, ...]  # names of the gates it failed
    judged: bool  # its manifest records gate verdicts
    promoted_now: bool  # eval_scores' promoted version is this one
    report: Path | None  # its validation report, if written

    @property
    def verdict(self) -> str:
        """`promoted` (`  <- promoted now` when it still is), `FAILED <gates>`, or `not judged` (no gate verdicts)."""
        if self.failed:
            return f"FAILED {', '.join(self.failed)}"
        if self.judged:
            return "promoted" + ("  <- promoted now" if self.promoted_now else "")
        return "not judged"


def evaluations(store: ArtifactStore, language: str) -> list[Evaluation]:
    """Each stored eval_scores version of the language, oldest first."""
    promoted = store.promoted("eval_scores", language)
    out = []
    for art in store.versions("eval_scores", language):
        man = art.manifest()
        inputs = man.get("inputs") or {}
        gates = man.get("gates") or []
        failed = tuple(g.get("name", "?") for g in gates if isinstance(g, dict) and g.get("passed") is False)
        report = art.path / REPORT
        out.append(Evaluation(version=art.version, created_at=man.get("created_at"), adapter=inputs.get("adapter"),
                              champion=inputs.get("champion") or None, failed=failed, judged=bool(gates),
                              promoted_now=promoted is not None and promoted.version == art.version,
                              report=report if report.is_file() else None))
    return out
