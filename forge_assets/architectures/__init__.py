"""The architecture registry: the one place a model family is described.

Each module of this package declares one `Family` (qwen2, qwen3, llama — Llama and Mistral —, qwen3_moe and
qwen3_next), and everything that depends on an architecture reads it from here:

- the streamed GGUF converter (`export/hf_to_gguf.py`): GGUF architecture, q/k row permutation, extra hyperparameter
  keys, tensor renames and value transforms, experts stacked into one 3-D tensor;
- the LoRA GGUF writer (`export/lora_gguf.py`): which adapted modules llama.cpp applies unmerged;
- both training backends (`training/peft_backend.py`, `training/mlx_backend.py`): LoRA target modules, and the
  expert parameters (`training.expert_lora`);
- random test models (`export/random_models.py`);
- the deploy targets: vLLM's LoRA target modules, whether Ollama's create applies an ADAPTER, whether mlx-lm serves it.

Adding a family is one new module here plus its line in `_MODULES` (docs/architectures.md has the recipe).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
DEFAULT_LORA_MODULES = ATTENTION + MLP  # also what a backend targets on a model whose family is not registered


@dataclass(frozen=True)
class Family:
    """What Forge knows about one model family. Names are Hugging Face's unless they say GGUF."""

    name: str
    label: str  # for messages: "Qwen2, Qwen2.5, Qwen2.5-Coder"
    model_types: tuple[str, ...]  # config.json model_type values
    hf_architectures: tuple[str, ...]  # config.json architectures (the transformers and vLLM class names)
    gguf_arch: str  # gguf-py MODEL_ARCH member
    permute_qk: bool = False  # llama.cpp's interleaved rotary layout: q/k rows permuted per head (Llama, Mistral)
    # LoRA targets, as leaf module names in the transformer blocks (PEFT target_modules, mlx-lm keys' last part)
    lora_modules: tuple[str, ...] = DEFAULT_LORA_MODULES
    # MoE experts stored fused as 3-D parameters in transformers (PEFT target_parameters), with their on-disk
    # per-expert projections: {parameter: (projections it holds, in order of its rows)}
    expert_parameters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # what each deploy target supports
    llama_cpp_lora: bool = True  # unmerged LoRA GGUF on the base GGUF
    vllm_lora_modules: frozenset[str] = frozenset()  # modules a vLLM LoRA may target (empty: vLLM LoRA unsupported)
    vllm_expert_lora: bool = False  # vLLM serves LoRA on the routed experts
    ollama_adapter: bool = False  # Ollama's create applies a safetensors ADAPTER for it
    mlx: bool = True  # mlx-lm loads it (training and serving)
    mlx_lora_modules: tuple[str, ...] | None = None  # mlx-lm's leaf names when they differ from lora_modules
    mlx_expert_modules: tuple[str, ...] = ()  # mlx-lm's expert layers (SwitchLinear) for training.expert_lora
    mlx_shifted_norms: tuple[str, ...] = ()  # norms an mlx-lm-saved checkpoint holds as weight + 1 already (name suffixes)
    plain_head: bool = True  # logits are exactly lm_head(last hidden state): the chunked loss applies (training/loss.py)
    # converter hooks (hf_to_gguf): extra GGUF keys, and per tensor: skip, rename, reshape and value transform
    write_hparams: Callable | None = None  # (gguf writer, config) -> None
    skip: Callable[[str], bool] | None = None
    rename: Callable[[str], str] | None = None
    transform: Callable[[str], Callable | None] | None = None  # hf name -> f(float32 rows) or None
    rows_shape: Callable[[str, tuple], tuple] | None = None  # on-disk shape -> the GGUF tensor's (torch order)
    f32_tensors: tuple[str, ...] = ()  # GGUF tensor kinds kept F32 beside 1-D ones (e.g. `ssm_conv1d`)
    random_config: Callable[..., dict] | None = None  # kwargs for a small random test model of this family
    notes: str = ""  # what runs where, shown in the docs

    @property
    def expert_projections(self) -> tuple[str, ...]:
        return tuple(p for parts in self.expert_parameters.values() for p in parts)

    @property
    def is_moe(self) -> bool:
        return bool(self.expert_parameters)

    def target_parameters(self, experts: bool) -> list[str]:
        """PEFT target_parameters: the fused expert tensors, relative to a block (`mlp.experts.gate_up_proj`)."""
        return [f"mlp.experts.{p}" for p in self.expert_parameters] if experts else []


_MODULES = ("qwen2", "qwen3", "llama", "qwen3_moe", "qwen3_next")


def _load() -> dict[str, Family]:
    families = {}
    for mod in _MODULES:
        for fam in importlib.import_module(f"{__name__}.{mod}").FAMILIES:
            families[fam.name] = fam
    return families


FAMILIES: dict[str, Family] = _load()
BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES.values() for t in f.model_types}
BY_HF_ARCHITECTURE: dict[str, Family] = {a: f for f in FAMILIES.values() for a in f.hf_architectures}


class UnknownArchitecture(ValueError):
    """A model whose family Forge does not know; the message names it and the families Forge knows."""


def supported() -> str:
    """The families, for messages: `qwen2 (Qwen2, Qwen2.5, Qwen2.5-Coder), …`."""
    return ", ".join(f"{t} ({f.label})" for f in FAMILIES.values() for t in f.model_types[:1])


def lookup(model_type: str | None) -> Family | None:
    return BY_MODEL_TYPE.get(model_type or "")


def of_config(config: dict, where: Path | str = "config.json") -> Family:
    """The family of a Hugging Face config.json dict; UnknownArchitecture naming what is unsupported."""
    kind = config.get("model_type")
    fam = lookup(kind)
    if fam is None:
        raise UnknownArchitecture(
            f"{where}: model_type `{kind}` ({', '.join(config.get('architectures') or [])}) is not an architecture Forge "
            f"knows; it knows {supported()}. Fix: choose a base model of one of those families, or add the family "
            "(docs/architectures.md).")
    return fam


def of_model_dir(model_dir: Path) -> Family | None:
    """The family of a Hugging Face model folder (its config.json), or None when unknown or unreadable."""
    try:
        return lookup(json.loads((Path(model_dir) / "config.json").read_text()).get("model_type"))
    except (OSError, ValueError):
        return None


def of_hf_architecture(name: str | None) -> Family | None:
    return BY_HF_ARCHITECTURE.get(name or "")


def expert_count(config: dict) -> int:
    """Routed experts of an MoE config.json (released checkpoints say num_experts, transformers 5 saves
    num_local_experts); 0 for a dense model."""
    return int(config.get("num_experts") or config.get("num_local_experts") or 0)


def lora_modules_of(model_type: str | None) -> tuple[str, ...]:
    """The LoRA target modules for a model_type: its family's, or DEFAULT_LORA_MODULES for an unregistered one."""
    fam = lookup(model_type)
    return fam.lora_modules if fam else DEFAULT_LORA_MODULES


def all_lora_modules() -> tuple[str, ...]:
    """Every leaf LoRA module name any family targets (for checks that do not know the family)."""
    return tuple(dict.fromkeys(m for f in FAMILIES.values() for m in f.lora_modules))


def lora_parameter_count(config: dict, rank: int, experts: bool = True) -> dict[str, int]:
    """LoRA parameters a base gets from Forge's targets at `rank`, from its config.json alone: {"attention": …,
    "other": … (linear attention, dense MLP), "experts": … (0 unless `experts`)} — what training.expert_lora costs,
    before training anything (fp32 weights, gradients and two Adam moments: 16 bytes each)."""
    fam = of_config(config)
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    q_out = heads * head_dim * (2 if fam.name == "qwen3_next" else 1)  # Qwen3-Next's q_proj holds the output gate
    shapes = {"q_proj": (hidden, q_out), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
              "o_proj": (heads * head_dim, hidden)}
    ff = int(config.get("intermediate_size") or 0)
    if not fam.is_moe:
        shapes.update(gate_proj=(hidden, ff), up_proj=(hidden, ff), down_proj=(ff, hidden))
    layers = int(config["num_hidden_layers"])
    recurrent = sum(1 for t in config.get("layer_types") or [] if t == "linear_attention")
    if fam.name == "qwen3_next":
        nk, nv = int(config["linear_num_key_heads"]), int(config["linear_num_value_heads"])
        dk, dv = int(config["linear_key_head_dim"]), int(config["linear_value_head_dim"])
        linear = {"in_proj_qkvz": (hidden, 2 * nk * dk + 2 * nv * dv), "in_proj_ba": (hidden, 2 * nv),
                  "out_proj": (nv * dv, hidden)}
    else:
        linear, recurrent = {}, 0
    per = {m: rank * (i + o) for m, (i, o) in shapes.items() if m in fam.lora_modules}
    attention = sum(v for m, v in per.items() if m in ATTENTION) * (layers - recurrent)
    other = sum(v for m, v in per.items() if m not in ATTENTION) * layers
    other += sum(rank * (i + o) for m, (i, o) in linear.items() if m in fam.lora_modules) * recurrent
    expert = 0
    if experts and fam.is_moe:
        n = expert_count(config)
        moe_ff = int(config["moe_intermediate_size"])
        expert = n * rank * ((hidden + 2 * moe_ff) + (moe_ff + hidden)) * layers  # gate_up [2·ff, hidden], down [hidden, ff]
    return {"attention": attention, "other": other, "experts": expert}
