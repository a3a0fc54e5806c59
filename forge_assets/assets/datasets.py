"""Stage 3: dataset, one language's train/valid/test JSONL built from its snapshot and sessions."""

import json

from dagster import AssetExecutionContext, Failure, MetadataValue, asset

from forge_assets.artifacts import input_key
from forge_assets.assets.common import figures, materialized, reuse
from forge_assets.fim_tokens import configured_base_scheme
from forge_assets.mining.dataset import build_dataset, dataset_card, fim_note, write_dataset
from forge_assets.mining.snapshot import FileEntry
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource

CODE_VERSION = "4"  # 4: files holding chat/FIM control token text are skipped (`control_tokens`); 2: splits weigh samples (test_fraction of samples, every kind represented); PEP 263 decoding; 3: chats in Qwen2.5's rendering (default system turn, tools)


@asset(partitions_def=language_partitions, group_name="mining", deps=["repo_snapshot", "session_logs"], code_version=CODE_VERSION)
def dataset(context: AssetExecutionContext, forge: ForgeResource):
    """Training samples for one language (code units, fill-in-the-middle, session chats) in mlx-lm JSONL."""
    cfg, store, language = forge.partition(context)
    snapshot = store.require("repo_snapshot", language)
    sessions = store.require("session_logs", language)
    # The card says what FIM samples become for the configured base; the key names its FIM scheme only when that is not
    # the canonical one the samples are written in, so datasets for Qwen bases (forge-tiny) keep their versions.
    base = configured_base_scheme(cfg.base_model, cfg.resolve("."))
    scheme = base[0].name if base[0] is not None else "unknown"
    key = input_key(snapshot=snapshot.version, sessions=sessions.version, mining=cfg.mining.model_dump(exclude={"workers"}), code=CODE_VERSION,
                    **({"base_fim": scheme} if scheme != "qwen" else {}))
    if (art := reuse(context, store, "dataset", language, key)) is not None:
        return materialized(art, figures(art.manifest()["stats"]), reused=True)
    files = _files(snapshot)
    conversations = [json.loads(line) for line in (sessions.path / "records.jsonl").read_text(encoding="utf-8").splitlines() if line]
    data = build_dataset(language, files, conversations, cfg.mining)
    if data.stats.get("samples", 0) == 0 or not data.splits.get("train"):
        kept = store.promoted("dataset", language)
        raise Failure(description=(
            f"The `{language}` dataset would be empty: snapshot {snapshot.version} and session logs {sessions.version} produced no training samples "
            f"(skipped: {dict(data.stats.get('skipped', {})) or 'nothing'}). It is not stored or promoted"
            + (f"; the promoted dataset {kept.version} stays" if kept else "") +
            ". Fix: check that the repositories hold this language's source files and that mining.max_file_bytes and filters keep them."))
    manifest = {"input_key": key, "inputs": {"repo_snapshot": snapshot.version, "session_logs": sessions.version}, "stats": data.stats}
    with store.write("dataset", language, manifest) as out:
        write_dataset(data, out.path)
        (out.path / "README.md").write_text(dataset_card(data, base))
    if base[0] is not None and not base[0].has_fim and data.stats.get("samples_by_kind", {}).get("fim"):
        context.log.warning(" ".join(fim_note(data, base)).replace("**", ""))
    return materialized(out.artifact, {**figures(data.stats), "card": MetadataValue.md(dataset_card(data, base))})


def _files(snapshot) -> list[FileEntry]:
    body = json.loads((snapshot.path / "snapshot.json").read_text())
    commits = snapshot.manifest()["commits"]
    return [FileEntry(repo, path, blob, size, commits[repo], body["repo_dirs"][repo]) for repo, path, blob, size in body["files"]]

