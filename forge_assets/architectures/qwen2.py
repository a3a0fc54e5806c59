"""Qwen2, Qwen2.5 and Qwen2.5-Coder (model_type `qwen2`): GGUF `qwen2`, attention q/k/v biases, NEOX rotary layout
(no q/k permutation), tied embeddings on the small sizes."""

from forge_assets.architectures import ATTENTION, MLP, Family


def random_config() -> dict:
    return {"use_sliding_window": False}


FAMILIES = [Family(
    name="qwen2", label="Qwen2, Qwen2.5, Qwen2.5-Coder", model_types=("qwen2",), hf_architectures=("Qwen2ForCausalLM",),
    gguf_arch="QWEN2", vllm_lora_modules=frozenset(ATTENTION + MLP), random_config=random_config,
    notes="llama.cpp LoRA GGUF, vLLM LoRA and mlx-lm; Ollama's create ignores Qwen adapters, so Ollama gets a merged GGUF.",
)]
