"""Stage 7: gguf, the adapter merged into the base model, converted to GGUF and quantized by llama.cpp."""

import shutil
import tempfile
from pathlib import Path

from dagster import AssetExecutionContext, asset

from forge_assets.artifacts import input_key
from forge_assets.assets.common import materialized, md_table
from forge_assets.export.gguf_export import convert_to_gguf, gguf_summary, quantize, smoke_generate
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.training.adapter import merge_adapter
from forge_assets.training.base_model import model_folder

CODE_VERSION = "1"
KEEP = ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "config.json")  # what serving needs besides the GGUF


@asset(partitions_def=language_partitions, group_name="export", deps=["adapter", "base_model", "eval_scores"], code_version=CODE_VERSION)
def gguf(context: AssetExecutionContext, forge: ForgeResource):
    """A quantized GGUF of the base model with the language's adapter merged in, proven to load in llama.cpp."""
    cfg = forge.load()
    store = forge.store(cfg)
    language, qtype = context.partition_key, cfg.deploy.quantization
    ad, base = store.require("adapter", language), store.require("base_model", "all")
    key = input_key(adapter=ad.version, base=base.version, quantization=qtype, code=CODE_VERSION)
    if (art := store.reusable("gguf", language, key)) is not None:
        return materialized(art, art.manifest()["figures"], reused=True)
    manifest = {"input_key": key, "inputs": {"adapter": ad.version, "base_model": base.version}, "quantization": qtype}
    work = Path(tempfile.mkdtemp(prefix="forge-gguf-", dir=store.root))
    try:
        merge_adapter(model_folder(base.path), ad.path, work / "merged")
        conversion = convert_to_gguf(work / "merged", work / "model-F32.gguf", "F32", name=f"{cfg.deploy.tag_prefix}-{language}")
        with store.write("gguf", language, manifest) as out:
            target = out.path / f"model-{qtype}.gguf"
            if qtype == "F32":
                shutil.copyfile(work / "model-F32.gguf", target)
            else:
                quantize(work / "model-F32.gguf", target, qtype)
            for name in KEEP:
                if (work / "merged" / name).is_file():
                    shutil.copyfile(work / "merged" / name, out.path / name)
            smoke = smoke_generate(target, "def ", max_tokens=12)
            summary = gguf_summary(target)
            figures = {"file": target.name, "bytes": summary["bytes"], "tensors": conversion["tensors"], "vocab_size": conversion["vocab_size"],
                       "tokenizer_pre": summary["tokenizer_pre"], "smoke_completion": smoke["completion"],
                       "smoke_completion_tokens": smoke["completion_tokens"]}
            manifest["figures"] = figures
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return materialized(out.artifact, {**figures, "tensor_types": md_table(summary["tensor_types"], "type", "tensors")})


def gguf_file(folder: Path) -> Path:
    """The GGUF inside a gguf artifact folder."""
    return next(folder.glob("model-*.gguf"))
