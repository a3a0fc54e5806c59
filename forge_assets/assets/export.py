"""Stage 7: gguf, the promoted adapter merged into the base it was trained on, converted to GGUF and quantized by llama.cpp."""

from pathlib import Path

from dagster import AssetExecutionContext, asset

from forge_assets.artifacts import input_key
from forge_assets.assets.common import gated_adapter, materialized, md_table
from forge_assets.assets.isolation import run_step
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.training.base_model import model_folder

CODE_VERSION = "1"


@asset(partitions_def=language_partitions, group_name="export", deps=["adapter", "base_model", "eval_scores"], code_version=CODE_VERSION)
def gguf(context: AssetExecutionContext, forge: ForgeResource):
    """A quantized GGUF of the base model with the language's adapter merged in, proven to load in llama.cpp."""
    cfg = forge.load()
    store = forge.store(cfg)
    language, qtype = context.partition_key, cfg.deploy.quantization
    ev, ad = gated_adapter(store, language, cfg.deploy.max_perplexity_ratio)
    base = store.get("base_model", "all", ad.manifest()["inputs"]["base_model"])  # the base this adapter was trained on
    key = input_key(adapter=ad.version, base=base.version, quantization=qtype, code=CODE_VERSION)
    if (art := store.reusable("gguf", language, key)) is not None:
        store.mark_candidate(art)
        store.promote(art)
        return materialized(art, art.manifest()["figures"], reused=True)
    manifest = {"input_key": key, "inputs": {"adapter": ad.version, "base_model": base.version, "eval_scores": ev.version}, "quantization": qtype}
    with store.workdir("gguf") as work, store.write("gguf", language, manifest) as out:
        # Merging, conversion, quantization and llama.cpp's load-and-generate smoke test run in their own process.
        figures = run_step(context, forge, "export_gguf", {
            "base": str(model_folder(base.path)), "adapter": str(ad.path), "out": str(out.path), "work": str(work),
            "quantization": qtype, "name": f"{cfg.deploy.tag_prefix}-{language}"}, work)
        tensor_types = figures.pop("tensor_types")
        manifest["figures"] = figures
    return materialized(out.artifact, {**figures, "tensor_types": md_table(tensor_types, "type", "tensors")})


def gguf_file(folder: Path) -> Path:
    """The GGUF inside a gguf artifact folder."""
    return next(folder.glob("model-*.gguf"))
