"""The gguf stage as plain code: merge an adapter into its base, convert to GGUF, quantize, prove it loads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from forge_assets.export.gguf_export import convert_to_gguf, gguf_summary, quantize, smoke_generate
from forge_assets.training.adapter import merge_adapter

KEEP = ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "config.json")  # what serving needs besides the GGUF


def export_gguf(base: Path, adapter: Path, out: Path, work: Path, qtype: str, name: str,
                phase: Callable[[str], None] = lambda _: None) -> dict:
    """Write `model-<qtype>.gguf` (plus tokenizer files) into out; return figures for metadata.

    `phase` is told each step's name before it starts, so a crash can be attributed to it.
    """
    phase("merge")
    merge_adapter(base, adapter, work / "merged")
    phase("convert")
    conversion = convert_to_gguf(work / "merged", work / "model-F32.gguf", "F32", name=name)
    target = out / f"model-{qtype}.gguf"
    phase("quantize")
    if qtype == "F32":
        shutil.copyfile(work / "model-F32.gguf", target)
    else:
        quantize(work / "model-F32.gguf", target, qtype)
    for keep in KEEP:
        if (work / "merged" / keep).is_file():
            shutil.copyfile(work / "merged" / keep, out / keep)
    phase("smoke_generate")
    smoke = smoke_generate(target, "def ", max_tokens=12)
    summary = gguf_summary(target)
    return {"file": target.name, "bytes": summary["bytes"], "tensors": conversion["tensors"], "vocab_size": conversion["vocab_size"],
            "tokenizer_pre": summary["tokenizer_pre"], "smoke_completion": smoke["completion"],
            "smoke_completion_tokens": smoke["completion_tokens"], "tensor_types": summary["tensor_types"]}
