"""What every Forge asset returns: a MaterializeResult whose data version is the artifact's content hash."""

from dagster import DataVersion, MaterializeResult, MetadataValue

from forge_assets.artifacts import Artifact


def materialized(art: Artifact, metadata: dict, reused: bool = False) -> MaterializeResult:
    """The result for a stored artifact version, with its location and the stage's figures."""
    return MaterializeResult(
        data_version=DataVersion(art.version),
        metadata={
            "version": art.version,
            "dagster/uri": MetadataValue.path(str(art.path)),
            "reused": reused,
            **metadata,
        },
    )


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
