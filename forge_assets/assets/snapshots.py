"""Stage 1: repo_snapshot, the (repo, path, blob) rows of one language at the repositories' heads."""

import json

from dagster import AssetExecutionContext, Failure, asset

from forge_assets.assets.common import materialized, md_table
from forge_assets.mining.snapshot import snapshot_of
from forge_assets.partitions import language_partitions
from forge_assets.private import redact_text
from forge_assets.resources import ForgeResource
from forge_assets.scrub import scrub_path


@asset(partitions_def=language_partitions, group_name="mining", code_version="2")
def repo_snapshot(context: AssetExecutionContext, forge: ForgeResource):
    """The source files of one language in the configured git repositories, pinned to blob shas."""
    cfg, store, language = forge.partition(context)
    snap = snapshot_of(cfg)
    for state in snap.repos:
        for warning in state.warnings:
            context.log.warning(redact_text(warning))  # snapshot's warnings name URLs redacted already; a second guard
    files = snap.files.get(language, [])
    commits = {r.name: r.commit for r in snap.repos}
    with store.write("repo_snapshot", language, {"commits": commits}, promote=False) as out:
        # Only language-specific content is hashed, so a push touching other languages keeps this version.
        # A path that holds a credential (`deploy/ghp_.../run.sh`) is stored scrubbed: the dataset reads the file by
        # its blob, and the path only names it (its commit history is then not paired with it).
        rows = [[f.repo, scrub_path(f.path), f.blob, f.size] for f in files]
        body = {"language": language, "files": rows, "repo_dirs": {r.name: r.repo_dir for r in snap.repos}}
        (out.path / "snapshot.json").write_text(json.dumps(body, indent=1, sort_keys=True))
    previous = store.promoted("repo_snapshot", language)
    if not files and previous is not None and json.loads((previous.path / "snapshot.json").read_text())["files"]:
        raise Failure(description=(
            f"The configured repositories hold no `{language}` files now, so the empty snapshot {out.artifact.version} is not promoted; "
            f"the promoted snapshot {previous.version} stays. Fix: check `repos:` and `branch:` in forge.yaml "
            f"(a branch switched or a path moved?), or drop `{language}` from `languages:`."))
    if not files:
        context.log.warning(f"No `{language}` files in the configured repositories; the snapshot is empty (sessions may still feed the dataset).")
    store.promote(out.artifact)
    return materialized(out.artifact, {
        "files": len(files),
        "repos": len({f.repo for f in files}),
        "bytes": sum(f.size for f in files),
        "commits": commits,
        "skipped (all languages)": md_table(dict(snap.skipped), "reason"),
    })
