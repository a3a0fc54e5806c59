"""`forge gc`: remove old artifact versions, keeping what is promoted, a candidate, deployed, or what a plain
`forge rollback` would serve (forge_assets.deploy.history.rollback_protected)."""

from __future__ import annotations


def gc(keep: int, dry_run: bool = False) -> int:
    """Remove old artifact versions that are neither promoted, candidates, deployed, among the newest `keep`, nor inputs of those."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy.history import rollback_protected

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    removed = store.gc(keep, protect=rollback_protected(store), dry_run=dry_run)
    for art in removed:
        print(f"forge gc: {'would remove' if dry_run else 'removed'} {art.asset}/{art.language}/{art.version}")
    print(f"forge gc: {len(removed)} version(s) {'to remove' if dry_run else 'removed'}; kept the newest {keep} of each, everything "
          "promoted or deployed, and the GGUF `forge rollback` would serve.")
    return 0
