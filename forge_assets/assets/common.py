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
