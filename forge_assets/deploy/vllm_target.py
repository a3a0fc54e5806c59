"""Plan a vLLM server that serves one base model with Forge's LoRA adapters (multi-LoRA, unmerged).

vLLM cannot run on this machine kind (it needs a CUDA or ROCm GPU and is not installed here), so this module
does not start anything: ``plan`` checks the adapters against vLLM's documented rules and returns the launch
command and a manifest, ``command_line`` renders the command for a shell. The rules, as of vLLM 0.2x (late 2026):

- adapters are PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``), loaded by
  ``vllm/lora/peft_helper.py``; mlx-lm folders (``adapters.safetensors``) are not read;
- ``PEFTHelper`` rejects ``modules_to_save`` (only ``classifier``/``score`` of classification models pass),
  DoRA (``use_dora``), bias training (``bias`` other than "none", ``lora_bias``), inits that change the base
  weights (PiSSA, OLoRA, CorDA, LoftQ; PEFT can convert such an adapter back to a plain LoRA, as Forge's pissa
  method does), aLoRA, layer replication, BD-LoRA and QALoRA; rsLoRA loads, scaled alpha/sqrt(r);
- ``--max-lora-rank`` must be one of ``MAX_LORA_RANKS`` (``MaxLoRARanks`` in ``vllm/config/lora.py``, default
  16), and an adapter whose rank (the largest of ``r`` and ``rank_pattern``) exceeds it is refused at load
  ("LoRA rank 32 is greater than max_lora_rank 16"); smaller ranks are padded, so any rank up to it works;
- a LoRA may only target modules the model class supports: for Qwen2/Qwen3 the attention and MLP projections
  (vLLM fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``), for Llama/Mistral also
  ``embed_tokens`` and ``lm_head`` (their ``embedding_modules``); other architectures are not checked here;
- ``--lora-modules`` takes ``name=path`` or, since vLLM 0.6, JSON ``{"name", "path", "base_model_name"}``;
  Forge writes the JSON form, whose ``base_model_name`` is shown as the adapter's ``parent`` in ``/v1/models``.
  Requests pick an adapter by naming it as their ``model``; ``--max-loras`` is how many adapters one batch may
  mix (Forge sets it to the number of adapters, so every language is served concurrently, without reloads);
- runtime loading is ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (not used by the plan).
"""

from __future__ import annotations

import json
import re
import shlex
import struct
from pathlib import Path

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16
_PROJECTIONS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
LORA_TARGETS = {  # vLLM model class -> modules a LoRA may target (packed_modules_mapping + embedding_modules)
    "Qwen2ForCausalLM": _PROJECTIONS,
    "Qwen3ForCausalLM": _PROJECTIONS,
    "LlamaForCausalLM": _PROJECTIONS | {"embed_tokens", "lm_head"},
    "MistralForCausalLM": _PROJECTIONS | {"embed_tokens", "lm_head"},
}
MUTATING_INITS = ("pissa", "olora", "corda", "loftq")
UNSUPPORTED = {"alora_invocation_tokens": "Activated LoRA (aLoRA)", "layer_replication": "layer_replication",
               "use_bdlora": "block-diagonal LoRA (BD-LoRA)", "use_qalora": "QALoRA"}
MERGE_FIX = ("or merge it into the base (`forge_assets.training.adapter.merge_adapter`) and serve the merged model "
             "with `vllm serve <merged>` and no LoRA")


def _safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file ({name: {"dtype", "shape", …}}), read without loading tensors."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header


def _config(adapter_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def adapter_rank(adapter_dir: Path) -> int | None:
    """The rank vLLM checks against --max-lora-rank: the largest of r, rank_pattern and the weights' own ranks."""
    config = _config(adapter_dir) or {}
    ranks = [v for v in [config.get("r"), *(config.get("rank_pattern") or {}).values()] if isinstance(v, int)]
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if weights.is_file():
        try:
            for name, info in _safetensors_header(weights).items():
                if name.endswith(".lora_A.weight") and info.get("shape"):
                    ranks.append(int(info["shape"][0]))
        except (OSError, ValueError, struct.error):
            pass
    return max(ranks) if ranks else None


def _targeted(adapter_dir: Path, config: dict) -> set[str]:
    """The module names (last path component) the adapter's weights target, else its target_modules list."""
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    found = set()
    if weights.is_file():
        try:
            for name in _safetensors_header(weights):
                m = re.search(r"\.([^.]+)\.lora_(?:embedding_)?[AB](?:\.weight)?$", name)
                if m:
                    found.add(m.group(1))
        except (OSError, ValueError, struct.error):
            pass
    if not found and isinstance(config.get("target_modules"), list):
        found = {str(t).rsplit(".", 1)[-1] for t in config["target_modules"]}
    return found


def architecture_of(model: str | Path | None) -> str | None:
    """The architecture a local Hugging Face model folder declares (config.json), else None."""
    if not model:
        return None
    try:
        archs = json.loads((Path(model) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, TypeError):
        return None
    return archs[0] if archs else None


def fitting_max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds rank (the largest one if none does)."""
    return next((r for r in MAX_LORA_RANKS if r >= rank), MAX_LORA_RANKS[-1])


def validate_adapter(adapter_dir: Path, max_lora_rank: int, architecture: str | None = None) -> list[str]:
    """Why vLLM would refuse to serve this adapter with --max-lora-rank max_lora_rank (empty: it loads).

    ``architecture`` (e.g. ``Qwen2ForCausalLM``) enables the target-module check; by default it is read from the
    local base folder named in the adapter's ``base_model_name_or_path``, when there is one.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        return [f"{adapter_dir} is not a folder. Fix: pass the adapter's folder (the `adapter` asset)"]
    has_peft = (adapter_dir / "adapter_model.safetensors").is_file() or (adapter_dir / "adapter_model.bin").is_file()
    if (adapter_dir / "adapters.safetensors").is_file() and not has_peft:
        return ["it is an mlx-lm adapter (adapters.safetensors), and vLLM loads PEFT adapters only. Fix: train it with "
                f"training.backend: peft, {MERGE_FIX}"]
    problems = []
    if not has_peft:
        problems.append("it has no adapter_model.safetensors (or .bin), so it is not a PEFT adapter. Fix: rematerialize "
                        "the adapter with training.backend: peft")
    config = _config(adapter_dir)
    if config is None:
        return problems + ["its adapter_config.json is missing or not JSON. Fix: rematerialize the adapter"]
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"it is a PEFT {config.get('peft_type')} adapter; vLLM serves LoRA adapters only. Fix: train a LoRA "
                        "adapter (training.method lora or rslora)")
    if max_lora_rank not in MAX_LORA_RANKS:
        problems.append(f"--max-lora-rank {max_lora_rank} is not one of the values vLLM accepts {list(MAX_LORA_RANKS)}. "
                        "Fix: pick one of them")
    r = config.get("r")
    if not isinstance(r, int) or r <= 0:
        problems.append(f"its rank r={r!r} is not a positive integer. Fix: rematerialize the adapter")
    rank = adapter_rank(adapter_dir)
    if rank is not None and rank > max_lora_rank:
        fix = (f"serve with --max-lora-rank {fitting_max_lora_rank(rank)} (max_lora_rank in the plan)"
               if rank <= MAX_LORA_RANKS[-1] else f"retrain with training.rank ≤ {MAX_LORA_RANKS[-1]}, {MERGE_FIX}")
        problems.append(f"its rank {rank} is greater than --max-lora-rank {max_lora_rank}, which vLLM refuses at load. Fix: {fix}")
    saved = list(config.get("modules_to_save") or [])
    if saved:
        problems.append(f"it saves whole modules (modules_to_save: {saved}), which vLLM refuses. Fix: retrain without "
                        f"modules_to_save (Forge's trainer never sets it), {MERGE_FIX}")
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter (use_dora), which vLLM does not support. Fix: train with training.method lora "
                        f"or rslora, {MERGE_FIX}")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append(f"it trains biases (bias: {config.get('bias')!r}, lora_bias: {config.get('lora_bias')!r}), which vLLM "
                        f"does not support. Fix: train with bias='none', {MERGE_FIX}")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(MUTATING_INITS):
        problems.append(f"init_lora_weights={init!r} changed the base weights, so the adapter does not fit the served base. "
                        "Fix: save it with PEFT's path_initial_model_for_weight_conversion (Forge's pissa method does), "
                        f"{MERGE_FIX}")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            problems.append(f"it uses {what}, which vLLM does not support. Fix: train a plain LoRA adapter, {MERGE_FIX}")
    arch = architecture or architecture_of(config.get("base_model_name_or_path"))
    allowed = LORA_TARGETS.get(arch or "")
    if allowed is not None:
        bad = sorted(_targeted(adapter_dir, config) - allowed)
        if bad:
            problems.append(f"it targets {bad}, which vLLM's {arch} cannot adapt (it supports {sorted(allowed)}). Fix: train "
                            f"with target modules among those (Forge's TARGET_MODULES), {MERGE_FIX}")
    return problems


def plan(base_model: str, adapters: dict[str, Path], host: str, port: int, max_lora_rank: int | None = None,
         context: int | None = None) -> dict:
    """The `vllm serve` command serving base_model with every adapter, and its manifest.

    ``base_model`` is what vLLM loads and serves under (a Hugging Face repo id or a folder on the GPU machine);
    ``adapters`` maps each adapter's served name (the ``model`` its requests name) to its PEFT folder.
    ``max_lora_rank`` defaults to the smallest value vLLM accepts that holds every adapter's rank; ``context`` sets
    ``--max-model-len`` (vLLM's default is the model's own context length).

    Returns ``{"command": [...], "manifest": {...}, "runs_here": False}``; the manifest has ``base_model``,
    ``endpoint``, ``max_lora_rank``, ``max_loras``, ``max_model_len``, ``lora_modules`` (``{name, path,
    base_model_name, rank}`` each) and ``requests`` ({name: request fields}). Raises ValueError listing every
    problem of every adapter (and of the settings), each with its fix.
    """
    if not adapters:
        raise ValueError("vLLM plan: no adapter was given. Fix: pass {language: adapter folder}.")
    adapters = {str(name): Path(path).resolve() for name, path in adapters.items()}
    ranks = {name: adapter_rank(path) for name, path in adapters.items()}
    known = [r for r in ranks.values() if r is not None]
    rank = max_lora_rank if max_lora_rank is not None else (fitting_max_lora_rank(max(known)) if known else DEFAULT_MAX_LORA_RANK)
    arch = architecture_of(base_model)
    problems: list[str] = []
    for name, path in adapters.items():
        if not name or name.strip() != name or name == base_model:
            problems.append(f"{name!r} ({path}): the served name must be non-empty, without surrounding spaces, and differ "
                            "from the base model's name. Fix: rename the adapter")
        problems += [f"{name} ({path}): {p}" for p in validate_adapter(path, rank, arch)]
    max_len = None
    if context is not None:
        limit = None
        try:
            limit = json.loads((Path(base_model) / "config.json").read_text()).get("max_position_embeddings")
        except (OSError, ValueError):
            pass
        if not isinstance(context, int) or context <= 0:
            problems.append(f"context {context!r} is not a positive number of tokens. Fix: set a positive --max-model-len")
        elif isinstance(limit, int) and context > limit:
            problems.append(f"context {context} exceeds the base model's max_position_embeddings {limit}, which vLLM refuses "
                            f"(unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1). Fix: set context ≤ {limit}")
        max_len = context
    if problems:
        raise ValueError(f"vLLM cannot serve {len(adapters)} adapter(s) on {base_model} as planned:\n- " + "\n- ".join(problems))

    modules = [{"name": name, "path": str(path), "base_model_name": base_model, "rank": ranks[name]}
               for name, path in adapters.items()]
    command = ["vllm", "serve", base_model, "--enable-lora", "--lora-modules",
               *[json.dumps({k: m[k] for k in ("name", "path", "base_model_name")}) for m in modules],
               "--max-lora-rank", str(rank), "--max-loras", str(len(modules))]
    if max_len is not None:
        command += ["--max-model-len", str(max_len)]
    command += ["--host", host, "--port", str(port)]
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
    manifest = {"base_model": base_model, "architecture": arch, "endpoint": f"http://{connect}:{port}/v1",
                "max_lora_rank": rank, "max_loras": len(modules), "max_model_len": max_len, "lora_modules": modules,
                "requests": {m["name"]: {"model": m["name"]} for m in modules}}
    return {"command": command, "manifest": manifest, "runs_here": False}


def command_line(plan: dict) -> str:
    """The plan's command as one shell-quoted line."""
    return shlex.join(plan["command"])
