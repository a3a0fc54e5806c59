"""Adapter folders, read in one place: what every consumer (llama.cpp LoRA export, mlx-lm serving, vLLM serving)
needs to know of an adapter before it applies its own checks.

Two formats:

- PEFT (``training.backend: peft``): ``adapter_config.json`` (``peft_type``, ``r``, ``lora_alpha``, ``use_rslora``,
  ``target_modules``, ``base_model_name_or_path`` …) and ``adapter_model.safetensors`` (or the older
  ``adapter_model.bin``) holding ``<module>.lora_A.weight`` [r, in] and ``.lora_B.weight`` [out, r];
- mlx-lm (``training.backend: mlx``): ``adapter_config.json`` (``fine_tune_type``, ``num_layers``,
  ``lora_parameters`` {rank, scale, keys}, ``model``) and ``adapters.safetensors`` holding ``<module>.lora_a``
  [in, r] and ``.lora_b`` [r, out].

``read_adapter`` returns an ``AdapterFiles`` (backend, config, rank, alpha, scale, target modules, base model
name, the tensor table read from the safetensors header without loading a tensor) or raises ``AdapterFileError``
naming the folder, what is wrong and the fix. ``peft_features`` lists what a PEFT config holds beyond a plain LoRA
(DoRA, biases, modules_to_save, base-changing inits …): each consumer says for itself which of them it refuses,
and why, in its own words.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_BIN = "adapter_model.bin"
MLX_WEIGHTS = "adapters.safetensors"
# PEFT initialisations that change the base weights: an adapter saved without converting them back to a plain LoRA
# (PEFT's path_initial_model_for_weight_conversion, which Forge's pissa method uses) only fits that changed base.
MUTATING_INITS = ("pissa", "olora", "corda", "loftq")
# PEFT LoRA variants beyond a plain LoRA, each a key of adapter_config.json: {key: what it is}.
PEFT_VARIANTS = {
    "alora_invocation_tokens": "Activated LoRA (aLoRA)",
    "layer_replication": "layer replication",
    "use_qalora": "QALoRA",
    "use_bdlora": "block-diagonal LoRA (BD-LoRA)",
    "target_parameters": "LoRA on raw parameters (target_parameters, e.g. MoE experts)",
    "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-style) weights",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
}
REMATERIALIZE = "rematerialize the adapter (the `adapter` asset)"


class AdapterFileError(ValueError):
    """An adapter folder that cannot be read; the message names the folder, what is wrong and the fix."""

    def __init__(self, folder: Path, problem: str, fix: str = REMATERIALIZE):
        self.folder, self.problem, self.fix = Path(folder), problem, fix
        super().__init__(f"{folder}: {problem}. Fix: {fix}.")


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter folder as read: its format, config and tensor table (names, dtypes and shapes; no tensor loaded)."""

    folder: Path
    backend: str  # "peft" or "mlx"
    config: dict  # adapter_config.json as written
    weights: Path  # adapter_model.safetensors / .bin, or adapters.safetensors
    tensors: dict[str, dict] = field(default_factory=dict)  # {name: {"dtype", "shape"}}; empty for a PEFT .bin file
    rank: int | None = None  # PEFT r, mlx lora_parameters.rank
    alpha: float | None = None  # PEFT lora_alpha (mlx-lm keeps no alpha, only its scale)
    scale: float | None = None  # the adapter-wide LoRA scale: alpha / r (alpha / sqrt(r) under rsLoRA), or mlx's own
    target_modules: tuple[str, ...] = ()  # PEFT target_modules, mlx lora_parameters.keys
    base_model: str | None = None  # PEFT base_model_name_or_path, mlx model

    def base_folder(self) -> Path | None:
        """The base model folder the adapter names, when it is a local Hugging Face folder (config.json)."""
        if self.base_model and (Path(self.base_model) / "config.json").is_file():
            return Path(self.base_model)
        return None


def backend_of(folder: Path) -> str:
    """Which format an adapter folder is in: "peft" (adapter_model.safetensors or .bin) or "mlx" (adapters.safetensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterFileError(folder, "is not a folder", "pass the adapter's folder (the `adapter` asset)")
    if (folder / PEFT_WEIGHTS).is_file() or (folder / PEFT_BIN).is_file():
        return "peft"
    if (folder / MLX_WEIGHTS).is_file():
        return "mlx"
    raise AdapterFileError(folder, f"neither a PEFT ({PEFT_WEIGHTS}) nor an mlx-lm ({MLX_WEIGHTS}) adapter folder",
                           "rematerialize `adapter`")


def read_config(folder: Path) -> dict:
    """adapter_config.json as a dict; AdapterFileError when it is missing, not JSON, or not a JSON object."""
    path = Path(folder) / CONFIG
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterFileError(folder, f"{CONFIG} is missing") from None
    except (OSError, ValueError) as exc:
        raise AdapterFileError(folder, f"{CONFIG} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AdapterFileError(folder, f"{CONFIG} is not a JSON object")
    return data


def tensor_table(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file ({name: {"dtype", "shape", …}}), read without loading tensors."""
    from forge_assets.export.safetensors_header import read_safetensors_header

    try:
        header = read_safetensors_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise AdapterFileError(Path(path).parent, f"{Path(path).name} is not a readable safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    return header


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_adapter(folder: Path) -> AdapterFiles:
    """An adapter folder (PEFT or mlx-lm) read: its config, tensor table, rank, alpha, scale, targets and base.

    Raises AdapterFileError when it is no adapter folder, its config is missing or not JSON, or its weights file is
    not a readable safetensors file. Rank and alpha are None where the config does not hold them as numbers: whether
    that matters is the consumer's check."""
    folder = Path(folder)
    backend = backend_of(folder)
    config = read_config(folder)
    if backend == "peft":
        weights = folder / PEFT_WEIGHTS if (folder / PEFT_WEIGHTS).is_file() else folder / PEFT_BIN
        tensors = tensor_table(weights) if weights.suffix == ".safetensors" else {}
        rank = config.get("r") if isinstance(config.get("r"), int) and config["r"] > 0 else None
        alpha = _number(config.get("lora_alpha"))
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank) if rank and alpha is not None else None
        targets = config.get("target_modules")
        targets = (targets,) if isinstance(targets, str) else tuple(map(str, targets or ()))
        return AdapterFiles(folder, backend, config, weights, tensors, rank, alpha, scale, targets,
                            config.get("base_model_name_or_path"))
    weights = folder / MLX_WEIGHTS
    params = config.get("lora_parameters") if isinstance(config.get("lora_parameters"), dict) else {}
    rank = params.get("rank") if isinstance(params.get("rank"), int) else None
    return AdapterFiles(folder, backend, config, weights, tensor_table(weights), rank, None, _number(params.get("scale")),
                        tuple(map(str, params.get("keys") or ())), config.get("model"))


def mutating_init(config: dict) -> str | None:
    """The base-changing initialisation a PEFT config was saved with unconverted (init_lora_weights pissa*, olora,
    corda, loftq; or a loftq_config), else None."""
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(MUTATING_INITS):
        return init
    return "loftq" if config.get("loftq_config") else None


def peft_features(config: dict) -> dict[str, object]:
    """What a PEFT adapter_config.json holds beyond a plain LoRA, {feature: its value}: "peft_type" (not LORA),
    "modules_to_save", "bias" (bias other than "none", or lora_bias), "use_dora", "init_lora_weights" (a
    base-changing init), and every PEFT_VARIANTS key that is set. Empty: a plain LoRA (rsLoRA, rank and alpha
    patterns included)."""
    out: dict[str, object] = {}
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        out["peft_type"] = kind
    if config.get("modules_to_save"):
        out["modules_to_save"] = list(config["modules_to_save"])
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        out["bias"] = f"bias: {config.get('bias')!r}, lora_bias: {config.get('lora_bias', False)!r}"
    if config.get("use_dora"):
        out["use_dora"] = True
    if (init := mutating_init(config)) is not None:
        out["init_lora_weights"] = init
    for key in PEFT_VARIANTS:
        if config.get(key):
            out[key] = config[key]
    return out


# The fix for each peft_features entry a consumer refuses (it then adds its own alternative: a merged model).
FEATURE_FIXES = {
    "modules_to_save": "train without modules_to_save (Forge's trainer never sets it)",
    "bias": "train with bias='none' and lora_bias=False",
    "use_dora": "train with training.method lora or rslora",
    "init_lora_weights": "save it with PEFT's path_initial_model_for_weight_conversion (Forge's pissa method does)",
}


def feature_text(key: str, value: object) -> str:
    """A peft_features entry as the start of a sentence: "it trains biases (bias: 'all', lora_bias: False)"."""
    if key == "peft_type":
        return f"it is a PEFT {value} adapter"
    if key == "modules_to_save":
        return f"it saves whole modules (modules_to_save: {value})"
    if key == "bias":
        return f"it trains biases ({value})"
    if key == "use_dora":
        return "it is a DoRA adapter (use_dora)"
    if key == "init_lora_weights":
        return f"init_lora_weights={value!r} changed the base weights, so the adapter only fits that changed base"
    return f"it uses {PEFT_VARIANTS.get(key, key)}"


def refused(features: dict[str, object], keys, why: str, alternative: str) -> list[str]:
    """One problem per refused feature: what it is, `why` (e.g. "which vLLM does not support"), and the fix, then
    the consumer's `alternative` (e.g. serving a merged model)."""
    return [f"{feature_text(key, features[key])}, {why}. Fix: {FEATURE_FIXES.get(key, 'train a plain LoRA adapter')}, "
            f"{alternative}" for key in keys if key in features]


def pattern_value(patterns: dict | None, module: str, default=None):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key (a regex allowed) matching the end of the module path."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", module):
            return value
    return default
