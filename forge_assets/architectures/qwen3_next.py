"""Qwen3-Next (model_type `qwen3_next`: Qwen3-Coder-Next, Qwen3-Next-80B-A3B): GGUF `qwen3next`.

A hybrid stack: most blocks are gated-DeltaNet linear attention (`linear_attn`), every `full_attention_interval`-th
one gated full attention (`self_attn`, whose q_proj rows hold per head [query; output gate], written as is and split
by llama.cpp); every block has a routed MoE with a shared expert and its sigmoid gate. Facts checked against the
llama.cpp of llama-cpp-python 0.3.36 (logits parity in forge_assets_tests/test_export/test_moe_export.py):

- zero-centred RMSNorms (input/post-attention norms, the final norm, q/k norms) are stored as weight + 1; the gated
  RMSNorm of the linear attention (`linear_attn.norm`) keeps its plain weight;
- `A_log` becomes `ssm_a` = −exp(A_log); `dt_bias` is `ssm_dt.bias`; `conv1d.weight` [C, 1, K] is `ssm_conv1d`
  [C, K], kept F32 with the routers and the shared-expert gate;
- `in_proj_qkvz` (per key-head group [q k v z]) and `in_proj_ba` are written as is (`ssm_in`, `ssm_ba`): llama.cpp
  splits them itself, and a LoRA on them maps one to one;
- hyperparameters: experts, shared-expert width, ssm conv kernel / state size (key head dim) / group count (key
  heads) / time-step rank (value heads) / inner size, rope dimensions = head_dim × partial_rotary_factor, and which
  blocks are recurrent (`full_attention_interval`, or a per-block array when layer_types is not periodic);
- multi-token-prediction weights (`mtp.*`) are not served by llama.cpp and are left out.

LoRA: attention (q/k/v/o), the linear attention's projections (in_proj_qkvz, in_proj_ba, out_proj), and with
`training.expert_lora` the routed experts. The shared expert is not targeted: PEFT 0.21 on transformers 5 maps
gate_proj/up_proj/down_proj to the fused routed experts and leaves the shared expert's untouched.
"""

import numpy as np

from forge_assets.architectures import ATTENTION, MLP, Family

LINEAR_ATTENTION = ("in_proj_qkvz", "in_proj_ba", "out_proj")
_ZERO_CENTRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
                 "self_attn.k_norm.weight")


def recurrent_layers(config: dict) -> list[bool]:
    n = int(config["num_hidden_layers"])
    types = config.get("layer_types")
    if types is None:
        k = int(config.get("full_attention_interval", 4))
        return [(i + 1) % k != 0 for i in range(n)]
    return [t == "linear_attention" for t in types]


def write_hparams(w, config: dict) -> None:
    from forge_assets.export.gguf_export import ExportError

    if not config.get("norm_topk_prob", False):
        raise ExportError("config.json: norm_topk_prob is false, and llama.cpp's qwen3next graph always renormalises the "
                          "top-k routing weights. Fix: use a Qwen3-Next release (they set norm_topk_prob: true).")
    if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step", 1)) != 1:
        raise ExportError("config.json: mlp_only_layers / decoder_sparse_step give some blocks a dense MLP, which llama.cpp's "
                          "qwen3next graph does not have. Fix: use a Qwen3-Next release (every block routed).")
    if int(config["linear_key_head_dim"]) != int(config["linear_value_head_dim"]):
        raise ExportError("config.json: linear_key_head_dim differs from linear_value_head_dim, and llama.cpp's qwen3next "
                          "sizes both by one state size. Fix: use a Qwen3-Next release.")
    w.add_expert_count(int(config["num_experts"]))
    w.add_expert_used_count(int(config["num_experts_per_tok"]))
    w.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
    w.add_expert_shared_feed_forward_length(int(config["shared_expert_intermediate_size"]))
    w.add_ssm_conv_kernel(int(config["linear_conv_kernel_dim"]))
    w.add_ssm_state_size(int(config["linear_key_head_dim"]))
    w.add_ssm_group_count(int(config["linear_num_key_heads"]))
    w.add_ssm_time_step_rank(int(config["linear_num_value_heads"]))
    w.add_ssm_inner_size(int(config["linear_value_head_dim"]) * int(config["linear_num_value_heads"]))
    recurrent = recurrent_layers(config)
    n = len(recurrent)
    for k in range(1, n + 1):
        if recurrent == [(i + 1) % k != 0 for i in range(n)]:
            w.add_full_attention_interval(k)
            return
    w.add_array(f"{w.arch}.attention.recurrent_layers", recurrent)  # llama.cpp reads it before the interval


def skip(name: str) -> bool:
    return name.startswith("mtp.") or ".mtp." in name


def rename(name: str) -> str:
    return name[: -len(".dt_bias")] + ".dt_proj.bias" if name.endswith(".linear_attn.dt_bias") else name


def _plus_one(rows: np.ndarray) -> np.ndarray:
    return rows + np.float32(1.0)


def _minus_exp(rows: np.ndarray) -> np.ndarray:
    return -np.exp(rows)


def transform(name: str):
    if name.endswith(".linear_attn.A_log"):
        return _minus_exp
    if name == "model.norm.weight" or name.endswith(_ZERO_CENTRED):
        return _plus_one
    return None


def rows_shape(name: str, shape: tuple) -> tuple:
    return (shape[0], shape[-1]) if name.endswith(".conv1d.weight") and len(shape) == 3 else shape


def random_config(moe_intermediate_size: int = 128, num_experts: int = 8, num_experts_per_tok: int = 2,
                  shared_expert_intermediate_size: int = 128, linear_num_key_heads: int = 2, linear_num_value_heads: int = 4,
                  linear_key_head_dim: int = 32, linear_conv_kernel_dim: int = 4, full_attention_interval: int = 4) -> dict:
    return {"num_experts": num_experts, "num_experts_per_tok": num_experts_per_tok, "moe_intermediate_size": moe_intermediate_size,
            "shared_expert_intermediate_size": shared_expert_intermediate_size, "norm_topk_prob": True,
            "mlp_only_layers": [], "decoder_sparse_step": 1, "linear_num_key_heads": linear_num_key_heads,
            "linear_num_value_heads": linear_num_value_heads, "linear_key_head_dim": linear_key_head_dim,
            "linear_value_head_dim": linear_key_head_dim, "linear_conv_kernel_dim": linear_conv_kernel_dim,
            "full_attention_interval": full_attention_interval}  # transformers derives layer_types from it


FAMILIES = [Family(
    name="qwen3_next", label="Qwen3-Next, Qwen3-Coder-Next", model_types=("qwen3_next",),
    hf_architectures=("Qwen3NextForCausalLM",), gguf_arch="QWEN3NEXT", lora_modules=ATTENTION + LINEAR_ATTENTION,
    expert_parameters={"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)},
    mlx_expert_modules=("switch_mlp.gate_proj", "switch_mlp.up_proj", "switch_mlp.down_proj"),
    mlx_shifted_norms=(".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight",
                       ".q_norm.weight", ".k_norm.weight"),  # mlx-lm's sanitize adds the +1 when it saves
    vllm_lora_modules=frozenset(ATTENTION + LINEAR_ATTENTION + MLP + ("shared_expert_gate", "gate")), vllm_expert_lora=True,
    write_hparams=write_hparams, skip=skip, rename=rename, transform=transform, rows_shape=rows_shape,
    f32_tensors=("ssm_conv1d", "ffn_gate_inp", "ffn_gate_inp_shexp", "ssm_a", "ssm_dt"), random_config=random_config,
    notes="llama.cpp LoRA GGUF on attention, linear attention and experts; vLLM (GPU) LoRA with one adapter per "
          "language (the target of this family); Ollama gets a merged GGUF.",
)]
