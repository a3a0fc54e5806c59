"""Dense Qwen3 (model_type `qwen3`): GGUF `qwen3`, per-head q/k RMS norms (`attn_q_norm`/`attn_k_norm`), head_dim
that may differ from hidden/heads, NEOX rotary layout."""

from forge_assets.architectures import ATTENTION, MLP, Family

FAMILIES = [Family(
    name="qwen3", label="dense Qwen3", model_types=("qwen3",), hf_architectures=("Qwen3ForCausalLM",), gguf_arch="QWEN3",
    vllm_lora_modules=frozenset(ATTENTION + MLP),
    notes="llama.cpp LoRA GGUF, vLLM LoRA and mlx-lm; Ollama gets a merged GGUF.",
)]
