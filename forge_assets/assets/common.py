"""What every Forge asset returns: a MaterializeResult whose data version is the artifact's content hash."""

import json

from dagster import DataVersion, Failure, MaterializeResult, MetadataValue

from forge_assets.artifacts import Artifact, ArtifactStore
from forge_assets.evaluation.gate import failed, judge_eval


def materialized(art: Artifact, metadata: dict, reused: bool = False, check_results: list | None = None) -> MaterializeResult:
    """The result for a stored artifact version, with its location and the stage's figures."""
    return MaterializeResult(
        check_results=check_results or [],
        data_version=DataVersion(art.version),
        metadata={
            "version": art.version,
            "dagster/uri": MetadataValue.path(str(art.path)),
            "reused": reused,
            **metadata,
        },
    )


def reuse(context, store: ArtifactStore, asset: str, language: str, key: str, *, candidate: bool = False) -> Artifact | None:
    """The stored version of `asset` made from exactly these inputs (`key`), said in the run's log, or None to build it.

    candidate=True makes it the candidate again (a gated stage: its check judges what this run produced)."""
    art = store.reusable(asset, language, key)
    if art is not None:
        context.log.info(f"{asset} {art.version} was made from these very inputs; reusing it.")
        if candidate:
            store.mark_candidate(art)
    return art


def md_table(rows: dict, key: str = "name", value: str = "count") -> MetadataValue:
    """A two-column Markdown table for a mapping (skip reasons, redactions, sample kinds)."""
    lines = [f"| {key} | {value} |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(rows.items())]
    return MetadataValue.md("\n".join(lines) if rows else "(none)")


def figures(stats: dict) -> dict:
    """Metadata from a stats dict: numbers as they are (plotted by the UI), flat count tables as Markdown."""
    out: dict = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k, v in stats.items():
        if isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()):
            out[k] = md_table(v)
    return out


def gated_adapter(store: ArtifactStore, language: str, gates, eval_version: str | None = None) -> tuple[Artifact, Artifact]:
    """The eval_scores version (promoted, or the exact one given) and the adapter it judged, verified to pass every
    eval gate of `gates` (forge.yaml's gates block) now.

    Export and deploy call this, so materializing them on their own can never ship a rejected adapter.
    """
    ev = store.get("eval_scores", language, eval_version) if eval_version else store.require("eval_scores", language)
    bad = failed(judge_eval(json.loads((ev.path / "scores.json").read_text()), gates))
    adapter_version = ev.manifest()["inputs"]["adapter"]
    if bad:
        raise Failure(description=f"adapter {adapter_version} for `{language}` (eval_scores {ev.version}) does not pass "
                                  + "; ".join(f"{v.name}: {v.message}" for v in bad),
                      metadata={f"{v.name}.{k}": val for v in bad for k, val in v.figures.items() if isinstance(val, (int, float))})
    return ev, store.get("adapter", language, adapter_version)
