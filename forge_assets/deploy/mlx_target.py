"""Serve a base model with Forge's LoRA adapters through mlx-lm's OpenAI-compatible server (``mlx_lm server``).

mlx-lm runs natively on Apple silicon and, through ``mlx[cpu]``, on Linux x86_64 (checked with mlx-lm 0.32.2).

**Adapter format.** mlx-lm loads its own adapter folders only (``mlx_lm/tuner/utils.py: load_adapters``):
``adapter_config.json`` with ``fine_tune_type`` (lora | dora | full), ``num_layers`` (LoRA goes on the *last*
num_layers transformer blocks) and ``lora_parameters`` ``{rank, scale, dropout, keys}`` (keys: module paths relative
to a block, such as ``self_attn.q_proj``; a key outside the blocks names a top-level module), plus
``adapters.safetensors`` holding ``<module path>.lora_a`` ``[in, r]`` and ``.lora_b`` ``[r, out]`` (DoRA also ``.m``
``[out]``), computing ``y = W x + scale * (x @ lora_a) @ lora_b`` (``tuner/lora.py``). PEFT keeps
``lora_A.weight`` ``[r, in]`` and ``lora_B.weight`` ``[out, r]`` with scaling alpha/r (alpha/sqrt(r) for rsLoRA), so
``to_mlx_adapter`` transposes them; per-module ranks and alphas (``rank_pattern``/``alpha_pattern``) become one
rank (smaller ones zero-padded, which changes nothing) and one scale (each module's own scale folded into its
``lora_b``), and PEFT DoRA's ``lora_magnitude_vector`` becomes mlx's ``m`` (both compute
``m / ||W + s·BA||_row · (W x + s·BAx) + bias``). Every converted folder is then loaded by mlx-lm's own
``load_adapters`` against the base model (lazily, so without reading its weights) before it is handed out.
PEFT features mlx-lm has no equivalent for are refused, naming the fix: ``modules_to_save``, bias training,
embedding LoRA, PiSSA/OLoRA/CorDA/LoftQ initialisations saved without conversion, aLoRA, QALoRA, layer replication,
and adapters of other PEFT types.

**The base model.** transformers 5 writes RoPE settings as ``rope_parameters``, which mlx-lm 0.32's Llama/Qwen2
ignore (they would fall back to rope_theta 1e6). ``mlx_lm server`` takes no model-config override, so when the
base needs one Forge serves a *view* of it: a folder of symlinks to the base's files with a patched ``config.json``
(``serving_base``).

**Which model and adapter a request gets** (``mlx_lm/server.py``). The server holds one (model, adapter) pair in
memory at a time. A request's ``model`` field is looked up first: ``"default_model"`` (also what an absent
``model`` means) is the ``--model`` with the ``--adapter-path`` given at start, and the request's ``adapters``
field is then *ignored*; any other value is taken as a model path (or Hugging Face repo id) and served with the
request's ``adapters`` path, or with no adapter at all when the request has none. A request for another pair
waits until the running batch drains, then the server drops the model and loads the other pair from disk. The
response's ``model`` echoes the request's. ``GET /v1/models`` lists the models in the Hugging Face cache that look
like mlx models, plus the resolved ``--model`` path; adapters are never listed. ``GET /health`` is 200 while the
generation thread lives (also while the model is still loading) and 503 once it died, e.g. because the adapter
could not be loaded; the HTTP server keeps running either way. mlx-lm says the server is not meant for production
(it only implements basic security checks; a client may make it load any path it can read).

**What Forge does.** ``start`` runs one server for one base model. With one adapter (a path) it is the server's
``--adapter-path``: one server per language is Forge's default, as every request then runs on a model that is
already loaded. With several (``{language: adapter}``) the first is loaded at start and each language's requests
must carry ``"model": <record["model"]>, "adapters": <that language's MLX adapter folder>`` (``record["requests"]``
holds those fields per language); a request for another language than the loaded one pays a full model reload,
so this suits light traffic on a machine that cannot hold one model per language. The server runs with
``HF_HUB_OFFLINE=1`` (a request naming an unknown model fails instead of downloading it) and an empty private
Hugging Face cache (so ``/v1/models`` lists exactly the served model, and answers where no cache exists).
``smoke`` asks every adapter for a chat and a text completion, ending on the default adapter.

Processes are started detached (own session, output in the log file) and recorded by pid, start time and
command-line marker (``procs.py``), so ``stop`` never signals a process Forge did not start.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from forge_assets.deploy import llama_server, procs
from forge_assets.deploy.llama_server import DeployError, port_free
from forge_assets.export.adapter_files import (CONFIG, MLX_WEIGHTS, PEFT_VARIANTS, AdapterFileError, AdapterFiles, backend_of,
                                               pattern_value, peft_features, read_adapter, refused)
from forge_assets.private import private_umask

DEFAULT_MODEL = "default_model"  # mlx_lm.server's name for --model with --adapter-path
ADAPTER_CONFIG, ADAPTER_WEIGHTS = CONFIG, MLX_WEIGHTS
PEFT_PREFIX = "base_model.model."
MERGE_FIX = ("or merge the adapter into the base (`forge_assets.training.adapter.merge_adapter`) and serve the merged "
             "model with mlx_lm server --model <merged> and no adapter")


class MlxAdapterError(ValueError):
    """An adapter mlx-lm cannot load; the message says why and how to fix it."""


# ------------------------------------------------------------------------------------------------ base model

def _model_config(base: Path) -> dict:
    from forge_assets.training.mlx_backend import _model_config

    return _model_config(base)


def serving_base(base_dir: Path, view_dir: Path) -> Path:
    """The folder mlx-lm should load as the base: base_dir itself, or (when mlx-lm would misread its config.json,
    see the module docstring) view_dir, rebuilt as symlinks to base_dir's files with a patched config.json."""
    base_dir = Path(base_dir).resolve()
    extra = _model_config(base_dir)
    if not extra:
        return base_dir
    view_dir = Path(view_dir)
    stamp = json.dumps({"base": str(base_dir), "config_overrides": extra,
                        "files": sorted(p.name for p in base_dir.iterdir())}, indent=2)
    with contextlib.suppress(OSError):
        if (view_dir / "forge_view.json").read_text() == stamp:  # already built (a running server may be reading it)
            return view_dir.resolve()
    tmp = view_dir.with_name(f".{view_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in base_dir.iterdir():
        if item.name != "config.json":
            (tmp / item.name).symlink_to(item)
    config = json.loads((base_dir / "config.json").read_text())
    config.update(extra)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "forge_view.json").write_text(stamp)
    _swap_in(tmp, view_dir)
    return view_dir.resolve()


def _swap_in(tmp: Path, final: Path) -> None:
    """Move the finished folder tmp to final, replacing what was there (two renames, then the old one is removed).
    Folders, not files, so not files.atomic_write: a folder cannot be renamed onto a non-empty one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _lazy_model(base_dir: Path):
    """mlx-lm's model for base_dir without reading its weights (mlx arrays are lazy)."""
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(base_dir), lazy=True, model_config=_model_config(Path(base_dir)))
    return model


# -------------------------------------------------------------------------------------------------- adapters

def _read(adapter_dir: Path) -> AdapterFiles:
    """The adapter folder as adapter_files reads it; its errors as MlxAdapterError (this module's ValueError)."""
    try:
        return read_adapter(adapter_dir)
    except AdapterFileError as exc:
        raise MlxAdapterError(str(exc)) from None


def peft_problems(config: dict) -> list[str]:
    """What in a PEFT adapter_config.json mlx-lm's LoRA/DoRA layers cannot reproduce (empty: convertible)."""
    features = peft_features(config)
    problems = []
    if "peft_type" in features:
        problems.append(f"it is a PEFT {config.get('peft_type')} adapter; mlx-lm loads LoRA and DoRA only. "
                        "Fix: train a LoRA adapter (training.method lora, rslora or dora)")
    # mlx-lm's LoRA/DoRA layers carry no whole modules nor biases, fit only the unchanged base, and compute no variant
    problems += refused(features, ("modules_to_save", "bias", "init_lora_weights", *PEFT_VARIANTS),
                        "which mlx-lm's LoRA/DoRA layers do not implement", MERGE_FIX)
    if not isinstance(config.get("r"), int) or config["r"] <= 0 or not isinstance(config.get("lora_alpha"), (int, float)):
        problems.append(f"its r ({config.get('r')!r}) and lora_alpha ({config.get('lora_alpha')!r}) are not a positive "
                        "rank and a number. Fix: rematerialize the adapter")
    return problems


def _scale(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / (math.sqrt(rank) if rslora else rank)


def _peft_modules(weights: dict) -> tuple[dict[str, dict], list[str]]:
    """PEFT tensors grouped by module path ({"A", "B", "m"}), and tensor names that are not LoRA/DoRA linear weights."""
    modules: dict[str, dict] = {}
    odd = []
    for name, w in weights.items():
        path = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        for suffix, part in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_magnitude_vector", "m"),
                             (".lora_magnitude_vector.weight", "m")):
            if path.endswith(suffix):
                modules.setdefault(path[: -len(suffix)], {})[part] = w
                break
        else:
            odd.append(name)
    return modules, odd


def _block_paths(model) -> list[str]:
    """The module path of every transformer block of an mlx-lm model (e.g. model.layers.3), in order."""
    by_id = {id(m): name for name, m in model.named_modules()}
    return [by_id[id(layer)] for layer in model.layers]


def _convert_peft(adapter_dir: Path, base_dir: Path) -> tuple[dict, dict]:
    """(adapter_config, weights) of the mlx-lm adapter equivalent to a PEFT LoRA/DoRA adapter folder."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    files = _read(adapter_dir)
    config = files.config
    problems = peft_problems(config)
    weights = mx.load(str(files.weights)) if not problems else {}
    modules, odd = _peft_modules(weights)
    embedding = [n for n in odd if ".lora_embedding_" in n]
    if embedding:
        problems.append(f"it has LoRA on embeddings ({embedding[0]}, …); Forge does not convert those for mlx-lm (with "
                        "tied embeddings mlx-lm would also apply them to the output head). Fix: target only linear layers "
                        f"(Forge's TARGET_MODULES), {MERGE_FIX}")
    elif odd:
        problems.append(f"it holds tensors that are not LoRA/DoRA linear weights ({', '.join(odd[:3])}). Fix: train a plain "
                        f"LoRA adapter, {MERGE_FIX}")
    incomplete = [p for p, parts in modules.items() if "A" not in parts or "B" not in parts]
    if incomplete:
        problems.append(f"modules {incomplete[:3]} lack lora_A or lora_B weights. Fix: rematerialize the adapter")
    if not modules and not problems:
        problems.append(f"{files.weights.name} holds no LoRA weights. Fix: rematerialize the adapter")
    dora = bool(config.get("use_dora"))
    if dora and modules and any("m" not in parts for parts in modules.values()):
        problems.append("use_dora is set but some modules lack lora_magnitude_vector. Fix: rematerialize the adapter")
    if problems:
        raise MlxAdapterError(f"{adapter_dir}: mlx-lm cannot load this PEFT adapter: " + "; ".join(problems) + ".")

    model = _lazy_model(base_dir)
    blocks = _block_paths(model)
    named = dict(model.named_modules())
    rslora = bool(config.get("use_rslora"))
    rank, scale = 0, _scale(config["lora_alpha"], config["r"], rslora)
    keys: set[str] = set()
    first = len(blocks)
    placed: dict[str, tuple[str, dict]] = {}  # mlx module path -> (PEFT module path, tensors)
    missing = []
    for path, parts in modules.items():
        target = named.get(path)
        if not isinstance(target, (nn.Linear, nn.QuantizedLinear)):
            missing.append(path)
            continue
        block = next((i for i, b in enumerate(blocks) if path.startswith(b + ".")), None)
        if block is None:
            keys.add(path)
        else:
            keys.add(path[len(blocks[block]) + 1:])
            first = min(first, block)
        rank = max(rank, parts["A"].shape[0])
        placed[path] = (path, parts)
    if missing:
        raise MlxAdapterError(f"{adapter_dir}: the adapter targets {missing[:3]}, which mlx-lm's "
                              f"{model.model_type if hasattr(model, 'model_type') else type(model).__name__} model at "
                              f"{base_dir} has no linear layer named so. Fix: serve it on the base model it was trained "
                              f"on (its adapter_config.json names {config.get('base_model_name_or_path')!r}), {MERGE_FIX}")

    num_layers = len(blocks) - first if first < len(blocks) else 0
    lora_parameters = {"rank": rank, "scale": scale, "dropout": float(config.get("lora_dropout") or 0.0), "keys": sorted(keys)}
    linear_to_lora_layers(model, num_layers, lora_parameters, use_dora=dora)
    expected = {n: v for n, v in tree_flatten(model.parameters()) if n.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")}
    out: dict = {}
    for name, param in expected.items():
        module, leaf = name.rsplit(".", 1)
        found = placed.get(module)
        if found is None:  # a layer or module the PEFT adapter left alone: no change
            out[name] = param if leaf == "m" else mx.zeros(param.shape, dtype=mx.float32)
            continue
        path, parts = found
        a, b = parts["A"], parts["B"]
        r = a.shape[0]
        if leaf == "m":
            out[name] = parts["m"].reshape(-1)
            continue
        if leaf == "lora_a":
            w = a.T
            pad = ((0, 0), (0, rank - r))
        else:
            alpha = pattern_value(config.get("alpha_pattern"), path)
            own = _scale(config["lora_alpha"] if alpha is None else alpha, r, rslora)
            w = b.T if own == scale else (b.astype(mx.float32).T * (own / scale)).astype(b.dtype)
            pad = ((0, rank - r), (0, 0))
        if rank != r:
            w = mx.pad(w, pad)
        if tuple(w.shape) != tuple(param.shape):
            raise MlxAdapterError(f"{adapter_dir}: {path} has LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} that do not fit "
                                  f"the base model's layer (mlx-lm expects {name} {tuple(param.shape)}). Fix: serve it on "
                                  f"the base model it was trained on ({config.get('base_model_name_or_path')!r}).")
        out[name] = w
    mlx_config = {
        "fine_tune_type": "dora" if dora else "lora",
        "num_layers": num_layers,
        "lora_parameters": lora_parameters,
        "converted_from": {"format": "peft", "path": str(adapter_dir), "r": config["r"], "lora_alpha": config["lora_alpha"],
                           "use_rslora": rslora, "use_dora": dora, "rank_pattern": config.get("rank_pattern") or {},
                           "alpha_pattern": config.get("alpha_pattern") or {},
                           "base_model_name_or_path": config.get("base_model_name_or_path")},
    }
    return mlx_config, out


def verify_mlx_adapter(adapter_dir: Path, base_dir: Path) -> None:
    """Load an mlx-format adapter folder with mlx-lm's own load_adapters onto base_dir's model (lazily);
    raise MlxAdapterError with mlx-lm's reason and a fix if it does not load."""
    from mlx_lm.tuner.utils import load_adapters

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise MlxAdapterError(f"{adapter_dir}: {ADAPTER_WEIGHTS} is missing. Fix: rematerialize the adapter.")
    config = _read(adapter_dir).config
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora", "full"):
        raise MlxAdapterError(f"{adapter_dir}: fine_tune_type {kind!r} is not one mlx-lm loads (lora, dora, full). "
                              "Fix: retrain with mlx_lm.lora --fine-tune-type lora.")
    if kind != "full" and ("num_layers" not in config or not isinstance(config.get("lora_parameters"), dict)
                           or not {"rank", "scale"} <= set(config["lora_parameters"])):
        raise MlxAdapterError(f"{adapter_dir}: adapter_config.json lacks num_layers or lora_parameters.rank/scale, which "
                              "mlx-lm needs. Fix: rematerialize the adapter (mlx-lm uses `scale`, not PEFT's lora_alpha).")
    model = _lazy_model(base_dir)
    try:
        load_adapters(model, str(adapter_dir))
    except (ValueError, KeyError, TypeError) as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        why = " ".join(lines[:4]) + (f" … and {len(lines) - 4} more" if len(lines) > 4 else "")
        raise MlxAdapterError(f"{adapter_dir}: mlx-lm cannot load it onto {base_dir}: {why}. Fix: serve it on the base "
                              "model it was trained on, or retrain it for this one.") from None


def to_mlx_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path) -> Path:
    """An mlx-lm adapter folder in out_dir for adapter_dir (PEFT: converted; mlx-lm: copied), checked to load onto
    base_dir with mlx-lm's own loader. Raises MlxAdapterError (a ValueError) naming what mlx-lm cannot load and the fix.
    """
    import mlx.core as mx

    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    backend = _read(adapter_dir).backend
    if backend == "mlx" and out_dir.resolve() == adapter_dir.resolve():
        verify_mlx_adapter(adapter_dir, base_dir)
        return out_dir
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)  # also creates out_dir's parent
    try:
        if backend == "mlx":
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copy2(adapter_dir / name, tmp / name)
        else:
            config, weights = _convert_peft(adapter_dir, base_dir)
            mx.save_safetensors(str(tmp / ADAPTER_WEIGHTS), weights, metadata={"format": "mlx"})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        verify_mlx_adapter(tmp, base_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, out_dir)
    return out_dir


# The HTTP and host helpers are llama_server's (one copy for every target).
_http, _connect_host, _busy = llama_server._http, llama_server._connect_host, llama_server._busy


# ------------------------------------------------------------------------------------------------- the server

def _get(url: str, timeout: float) -> tuple[int, dict]:
    """(status, JSON body) of a GET; HTTP error statuses are returned, not raised (their body {} unless JSON)."""
    status, text = llama_server._request("GET", url, timeout=timeout)
    if status >= 400:
        with contextlib.suppress(ValueError):
            return status, json.loads(text or "{}")
        return status, {}
    return status, json.loads(text or "{}")


def _adapter_map(adapters: dict[str, Path] | Path) -> dict[str, Path]:
    if isinstance(adapters, dict):
        if not adapters:
            raise DeployError("mlx-lm server: no adapter was given. Fix: pass an adapter folder or {language: folder}.")
        return {str(k): Path(v) for k, v in adapters.items()}
    return {Path(adapters).name: Path(adapters)}


def _prepare_adapters(adapters: dict[str, Path], base: Path, work: Path) -> dict[str, dict]:
    """{name: {"path": mlx folder served, "source": given folder}}; PEFT adapters are converted into work/<name>."""
    out = {}
    for name, src in adapters.items():
        try:
            if backend_of(src) == "mlx":
                verify_mlx_adapter(src, base)
                path = src.resolve()
            else:
                path = to_mlx_adapter(src, base, work / re.sub(r"[^A-Za-z0-9._-]", "_", name)).resolve()
        except ValueError as exc:
            raise DeployError(f"mlx-lm cannot serve adapter {name!r}: {exc} Nothing was started.") from None
        out[name] = {"path": str(path), "source": str(src)}
    return out


# deploy.parameters' keys mlx_lm.server (0.32) takes as launch defaults; a request's own fields still win.
MLX_FLAGS = {"temperature": "--temp", "top_p": "--top-p", "top_k": "--top-k", "min_p": "--min-p", "max_tokens": "--max-tokens"}
# ... and those it has no launch option for: repeat_penalty and stop are request fields only (repetition_penalty, stop:
# `request_defaults` in the record, which the client configurations carry); num_ctx has no equivalent (mlx-lm's context
# is the model's own, its KV cache grows with the conversation).
MLX_REQUEST_ONLY = ("repeat_penalty", "stop")


def generation_args(generation, template: str | None) -> tuple[list[str], dict]:
    """(mlx_lm.server launch arguments, request-only fields) for a tag's settings (deploy/settings.py's Generation).

    Arguments: one flag per set parameter mlx-lm takes (MLX_FLAGS), and ``--chat-template`` with the tag's system
    prompt as the default system message (engine_settings.with_default_system) when one is configured: a request without
    a system message then gets it, as an Ollama tag's SYSTEM does. Without a configured system prompt the base's own
    template (and its own default) is served unchanged. Request-only: repetition_penalty and stop, as OpenAI fields."""
    from forge_assets.deploy.engine_settings import request_fields, system_for_template, with_default_system

    if generation is None:
        return [], {}
    args: list[str] = []
    for key, flag in MLX_FLAGS.items():
        if key in generation.parameters:
            args += [flag, str(generation.parameters[key])]
    system = system_for_template(generation, template)
    if system is not None:
        args += ["--chat-template", with_default_system(template, system)]
    only = request_fields({k: v for k, v in generation.parameters.items() if k in MLX_REQUEST_ONLY})
    return args, only


def start(base_dir: Path, adapters: dict[str, Path] | Path, host: str, port: int, log_path: Path,
          timeout: float = 120.0, generation=None) -> dict:
    """Start a detached mlx-lm server for base_dir with the adapters on host:port; return once it has answered a
    completion with the default (first) adapter loaded.

    ``adapters`` is one adapter folder or ``{language: folder}``, PEFT or mlx-lm format; PEFT ones are converted
    into ``<log_path's folder>/mlx-adapters/<language>``, and the base view (if one is needed) is
    ``<log_path's folder>/mlx-base``. Returns the record: ``endpoint``, ``model`` (the id /v1/models lists),
    ``adapters`` ({language: {path, source}}), ``default_adapter``, ``requests`` ({language: the ``model`` and
    ``adapters`` fields its requests must carry}), ``pid``, ``log`` and ``process`` (the identity record for stop).
    Raises DeployError saying what failed and where the log is; a server that failed is stopped.

    ``generation`` (deploy/settings.py's Generation, from service.generation_settings) sets the server's defaults for
    every request that does not set its own (`generation_args`: --temp, --top-p, --top-k, --min-p, --max-tokens and a
    --chat-template with the tag's system prompt); the record gets ``generation`` and ``request_defaults`` (the fields
    mlx-lm takes per request only: repetition_penalty, stop). With several adapters the one server applies them to all.
    """
    base_dir, log_path = Path(base_dir), Path(log_path)
    work = log_path.parent
    private_umask()  # the converted adapters, the base view, the cache and the server's own files
    work.mkdir(parents=True, exist_ok=True)
    if not port_free(host, port):
        raise DeployError(f"mlx-lm server: {_busy(host, port)}. Fix: stop that program, or choose a free port.")
    if not (base_dir / "config.json").is_file():
        raise DeployError(f"mlx-lm server: {base_dir} is not a model folder (no config.json). Fix: pass the base model's "
                          "Hugging Face folder (the `base_model` asset).")
    served = _prepare_adapters(_adapter_map(adapters), base_dir, work / "mlx-adapters")
    model_dir = str(serving_base(base_dir, work / "mlx-base"))
    default = next(iter(served))
    cache = work / "mlx-hf-cache"  # empty: /v1/models lists only the served model, and answers without a user cache
    cache.mkdir(exist_ok=True)
    from forge_assets.chat import template_of

    gen_args, request_defaults = generation_args(generation, template_of(base_dir))
    cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", model_dir, "--adapter-path", served[default]["path"],
           "--host", host, "--port", str(port), *gen_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    marker = ["mlx_lm", "server", model_dir, str(port)]
    started = procs.start_server(cmd, log_path, f"starting mlx-lm server for {model_dir} with {', '.join(served)} on {host}:{port}",
                                 marker, f"mlx-lm server for {', '.join(served)} on port {port}", port, env=env)
    process = started.record or {"pid": started.proc.pid, "create_time": None, "marker": marker,
                                 "what": f"mlx-lm server for {', '.join(served)} on port {port}"}
    endpoint = f"http://{_connect_host(host)}:{port}/v1"
    root = endpoint[: -len("/v1")]
    model_id = str(Path(model_dir).resolve())
    record = {"pid": started.proc.pid, "host": host, "port": port, "endpoint": endpoint, "model": model_id, "base": str(base_dir),
              "served_base": model_dir, "adapters": served, "default_adapter": default,
              "requests": {name: {"model": model_id, "adapters": a["path"]} for name, a in served.items()},
              "log": str(log_path), "log_offset": started.offset, "process": process,
              "generation": generation.as_dict() if generation is not None else None, "generation_args": gen_args,
              "request_defaults": request_defaults}

    def fail(why: str, tail: str | None = None) -> DeployError:
        procs.terminate(process)
        tail = procs.log_tail(log_path, started.offset) if tail is None else tail
        return DeployError(f"mlx-lm server for {base_dir.name} with adapter {default!r}: {why}"
                           f"{f' ({tail})' if tail else ''}. It was stopped; nothing serves on {host}:{port}. See {log_path}.")

    deadline = time.monotonic() + timeout
    probe: dict = {}

    def ask() -> None:  # one 1-token completion: answers once the default model and adapter are loaded
        try:
            probe["out"] = _http("POST", f"{endpoint}/completions", {"model": DEFAULT_MODEL, "prompt": "def",
                                                                      "max_tokens": 1, "temperature": 0},
                                 timeout=max(1.0, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported below
            probe["error"] = exc

    asker: list[threading.Thread] = []

    def ready() -> dict | None:
        status = None
        with contextlib.suppress(*procs.NOT_YET):
            status, _ = _get(f"{root}/health", timeout=2)
        if status == 503:
            raise fail("the server could not load the model and adapter (/health reports its generation thread died)")
        if status == 200 and not asker:
            asker.append(threading.Thread(target=ask, daemon=True))
            asker[0].start()
        if not asker or asker[0].is_alive():
            return None
        if "out" in probe and (probe["out"].get("choices") or [{}])[0].get("text") is not None:
            record["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            return record
        raise fail(f"its first completion failed: {probe.get('error') or probe.get('out')}")

    return procs.wait_ready(started, ready, timeout, poll=0.1, not_yet=(),
                            exited=lambda code, tail: fail(f"the server exited with code {code} while starting", tail),
                            timed_out=lambda tail: fail(f"it did not answer a completion on {endpoint} within {timeout:.0f}s", tail))


def _post(record: dict, route: str, body: dict, what: str, timeout: float) -> dict:
    url = f"{record['endpoint']}/{route}"
    try:
        return _http("POST", url, body, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        why = f"HTTP {exc.code} ({detail})"
    except (OSError, urllib.error.URLError, ValueError) as exc:
        why = str(getattr(exc, "reason", exc))
    server = procs.status(record.get("process"))
    state = (f"The server (pid {record['pid']}) is still running on {record['endpoint']}" if server == "running"
             else f"The server (pid {record['pid']}) {server}")
    raise DeployError(f"smoke test: POST {url} for {what} failed: {why}. {state}; see {record['log']}.")


def smoke(record: dict, prompt: str = "Write a hello world function.", max_tokens: int = 8,
          timeout: float = 120.0) -> dict:
    """A chat completion and a text completion for every adapter of a running server (the default adapter last,
    so the server ends with it loaded). Returns {language: {"chat", "completion", "finish_reason", "seconds"}};
    raises DeployError if an answer is missing or names another model. The server is left running."""
    names = [n for n in record["adapters"] if n != record["default_adapter"]] + [record["default_adapter"]]
    out = {}
    for name in names:
        fields = record["requests"][name]
        began = time.monotonic()
        chat = _post(record, "chat/completions", {**fields, "messages": [{"role": "user", "content": prompt}],
                                                  "max_tokens": max_tokens, "temperature": 0}, f"adapter {name!r}", timeout)
        choice = (chat.get("choices") or [{}])[0]
        if "message" not in choice or chat.get("model") != fields["model"]:
            raise DeployError(f"smoke test: {record['endpoint']}/chat/completions answered without a message for adapter "
                              f"{name!r}: {json.dumps(chat)[:300]}. The server is still running; see {record['log']}.")
        text = _post(record, "completions", {**fields, "prompt": "def add(a, b):", "max_tokens": max_tokens,
                                             "temperature": 0}, f"adapter {name!r}", timeout)
        tchoice = (text.get("choices") or [{}])[0]
        if not isinstance(tchoice.get("text"), str) or text.get("model") != fields["model"]:
            raise DeployError(f"smoke test: {record['endpoint']}/completions answered without text for adapter {name!r}: "
                              f"{json.dumps(text)[:300]}. The server is still running; see {record['log']}.")
        out[name] = {"chat": choice["message"].get("content") or "", "completion": tchoice["text"],
                     "finish_reason": choice.get("finish_reason"), "seconds": round(time.monotonic() - began, 3)}
    return out


def health(record: dict | None, timeout: float = 5.0) -> dict:
    """Whether the server answers: GET /health is 200 and /v1/models lists the served model.

    Returns ``{"ok", "health": "up" | "down: <why>. Fix: …", "endpoint", "model", "models", "server"}``.
    """
    if not record:
        return {"ok": False, "health": "down: no mlx-lm server is recorded. Fix: start one.", "endpoint": None,
                "model": None, "models": [], "server": "not recorded"}
    endpoint, model = record["endpoint"], record["model"]
    out = {"endpoint": endpoint, "model": model, "models": []}
    server = procs.status(record.get("process"))
    out["server"] = server
    where = f"{record['host']}:{record['port']}"
    try:
        status, body = _get(f"{endpoint[: -len('/v1')]}/health", timeout)
        if status == 200:
            status, body = _get(f"{endpoint}/models", timeout)
            out["models"] = [m.get("id") for m in body.get("data", [])]
            if status == 200 and model in out["models"]:
                return {**out, "ok": True, "health": "up"}
            why = f"{endpoint}/models answers HTTP {status} without {model} (it lists {out['models']})"
        else:
            why = f"/health answers HTTP {status}: the server's generation thread died (see {record['log']})"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = procs.unreachable(exc, where, timeout)
    note = "" if server == "running" else f"; the mlx-lm server (pid {record['pid']}) {server}"
    return {**out, "ok": False, "health": f"down: {why}{note}; see {record['log']}. Fix: stop it and start it again."}


def stop(record: dict | None) -> str:
    """Stop the recorded server if it is still the process Forge started; a dead or reused pid is not signalled.
    Returns a sentence saying what happened."""
    if not record:
        return "no mlx-lm server is recorded"
    return procs.terminate(record.get("process"))
