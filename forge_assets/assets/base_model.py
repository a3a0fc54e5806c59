"""Stage 4: base_model, forge-tiny built from the corpus, or a configured Hugging Face model."""

import json

from dagster import AssetExecutionContext, asset

from forge_assets.artifacts import input_key
from forge_assets.assets.common import materialized, reuse
from forge_assets.assets.isolation import run_step
from forge_assets.mining.corpus import pretraining_corpus
from forge_assets.mining.snapshot import snapshot_of
from forge_assets.resources import ForgeResource
from forge_assets.training.base_model import TINY, check_base_model, folder_fingerprint, resolve_base_model

CODE_VERSION = "4"  # 2: corpus filtered and scrubbed like the datasets; 3: longer pretraining, held-out files measured; 4: Qwen2.5-identical chat template
ALL = "all"  # the base model is shared by every language partition


@asset(group_name="training", code_version=CODE_VERSION)
def base_model(context: AssetExecutionContext, forge: ForgeResource):
    """The model every language's adapter is trained on, as a Hugging Face model folder."""
    cfg, store, _ = forge.partition(context)
    if cfg.base_model == TINY:
        # Built once from the corpus as it is then; a push must not retrain every language's base.
        # A new forge-tiny comes only from a change of `tiny_model` (e.g. its seed), of the corpus filter's
        # one setting, or of this code.
        key = input_key(tiny=cfg.tiny_model.model_dump(), max_file_bytes=cfg.mining.max_file_bytes, code=CODE_VERSION)
        if (art := reuse(context, store, "base_model", ALL, key)) is not None:
            return materialized(art, art.manifest()["figures"], reused=True)
        snap = snapshot_of(cfg)
        found = pretraining_corpus(snap, cfg.mining)  # the dataset's filters and secret scrubbing
        texts = found.texts
        corpus = {lang: snap.fingerprint(lang) for lang in snap.languages()}
        manifest = {"input_key": key, "source": TINY, "corpus": corpus, "figures": {}}
        with store.workdir("base_model") as work, store.write("base_model", ALL, manifest) as out:
            corpus_file = work / "corpus.jsonl"
            corpus_file.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
            # Pretraining runs torch: in its own process (Dagster Pipes), so a crash cannot take the orchestrator down.
            figures = run_step(context, forge, "build_tiny_model",
                               {"corpus": str(corpus_file), "out": str(out.path), "tiny_model": cfg.tiny_model.model_dump()}, work)
            figures = {**figures, "corpus_files_skipped": sum(found.skipped.values()), "redactions": sum(found.redactions.values())}
            manifest["figures"] = figures  # the manifest is written when the block ends
    else:
        folder = resolve_base_model(cfg.base_model, cfg.resolve("."))
        figures = check_base_model(folder)
        key = input_key(source=str(folder), fingerprint=folder_fingerprint(folder))
        if (art := reuse(context, store, "base_model", ALL, key)) is not None:
            return materialized(art, art.manifest()["figures"], reused=True)
        with store.write("base_model", ALL, {"input_key": key, "source": cfg.base_model, "figures": figures}) as out:
            # A real model is referenced in place, not copied: its weights can be tens of GB.
            (out.path / "model.json").write_text(json.dumps({"source": cfg.base_model, "path": str(folder), "fingerprint": key}, indent=2))
    return materialized(out.artifact, {"source": cfg.base_model, **{k: v for k, v in figures.items() if v is not None}})

