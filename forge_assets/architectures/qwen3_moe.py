"""Qwen3 mixture-of-experts (model_type `qwen3_moe`: Qwen3-Coder-30B-A3B, Qwen3-30B-A3B, Qwen3-235B-A22B):
GGUF `qwen3moe`.

- Blocks: Qwen3 attention (per-head q/k norms) and a routed MoE MLP: router `mlp.gate` [experts, hidden]
  (GGUF `ffn_gate_inp`), experts stored on disk one by one (`mlp.experts.{e}.gate_proj/up_proj/down_proj`) and
  written as one 3-D tensor each (`ffn_gate_exps`/`ffn_up_exps` [experts, moe_ff, hidden], `ffn_down_exps`
  [experts, hidden, moe_ff]). In memory transformers 5 fuses them (`mlp.experts.gate_up_proj` [experts, 2·moe_ff,
  hidden], gate rows first, and `mlp.experts.down_proj`).
- llama.cpp's qwen3moe graph renormalises the top-k routing weights (`norm_topk_prob: true`, as every Qwen3 MoE
  release) and puts a MoE MLP in every block, so other settings are refused rather than served wrong.
- LoRA: attention always; the experts with `training.expert_lora` (PEFT `target_parameters` on the fused expert
  tensors, router frozen). llama.cpp applies expert LoRA unmerged through its `mul_mat_id` LoRA path, as 3-D
  `lora_a` [experts, r, in] / `lora_b` [experts, out, r] tensors.
"""

from forge_assets.architectures import ATTENTION, Family


def write_hparams(w, config: dict) -> None:
    from forge_assets.export.gguf_export import ExportError

    if not config.get("norm_topk_prob", False):
        raise ExportError("config.json: norm_topk_prob is false, and llama.cpp's qwen3moe graph always renormalises the "
                          "top-k routing weights, so the GGUF would compute another model. Fix: use a Qwen3 MoE release "
                          "(they all set norm_topk_prob: true).")
    if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step", 1)) != 1:
        raise ExportError("config.json: mlp_only_layers / decoder_sparse_step give some blocks a dense MLP, which llama.cpp's "
                          "qwen3moe graph does not have. Fix: use a Qwen3 MoE release (every block routed).")
    from forge_assets.architectures import expert_count

    w.add_expert_count(expert_count(config))
    w.add_expert_used_count(int(config["num_experts_per_tok"]))
    w.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))


def random_config(moe_intermediate_size: int = 128, num_experts: int = 8, num_experts_per_tok: int = 2) -> dict:
    return {"num_experts": num_experts, "num_experts_per_tok": num_experts_per_tok,
            "moe_intermediate_size": moe_intermediate_size, "norm_topk_prob": True, "mlp_only_layers": [],
            "decoder_sparse_step": 1, "use_sliding_window": False}


FAMILIES = [Family(
    name="qwen3_moe", label="Qwen3 MoE, Qwen3-Coder-30B-A3B", model_types=("qwen3_moe",),
    hf_architectures=("Qwen3MoeForCausalLM",), gguf_arch="QWEN3MOE", lora_modules=ATTENTION,
    expert_parameters={"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)},
    mlx_expert_modules=("switch_mlp.gate_proj", "switch_mlp.up_proj", "switch_mlp.down_proj"),
    vllm_lora_modules=frozenset(ATTENTION + ("gate", "embed_tokens", "lm_head")), vllm_expert_lora=True,
    write_hparams=write_hparams, random_config=random_config,
    notes="llama.cpp LoRA GGUF on attention and experts (Tabby's setup); vLLM LoRA on attention and experts on CUDA "
          "(vLLM's CPU build crashes on MoE LoRA, so Forge refuses it there); mlx-lm; Ollama gets a merged GGUF.",
)]
