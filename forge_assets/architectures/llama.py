"""Llama 2/3 (model_type `llama`) and Mistral (`mistral`, GGUF architecture `llama` too).

Both use llama.cpp's interleaved rotary layout, so q/k rows (and the rows of a q/k LoRA's B) are permuted per head
from Hugging Face's half-split layout. Ollama's create applies safetensors LoRA adapters for both."""

from forge_assets.architectures import ATTENTION, MLP, Family

_VLLM = frozenset(ATTENTION + MLP + ("embed_tokens", "lm_head"))


def _mistral_random() -> dict:
    return {"sliding_window": None}


FAMILIES = [
    Family(name="llama", label="Llama 2/3", model_types=("llama",), hf_architectures=("LlamaForCausalLM",),
           gguf_arch="LLAMA", permute_qk=True, vllm_lora_modules=_VLLM, ollama_adapter=True,
           notes="Every target: llama.cpp LoRA GGUF, vLLM LoRA, Ollama ADAPTER, mlx-lm."),
    Family(name="mistral", label="Mistral", model_types=("mistral",), hf_architectures=("MistralForCausalLM",),
           gguf_arch="LLAMA", permute_qk=True, vllm_lora_modules=_VLLM, ollama_adapter=True, random_config=_mistral_random,
           notes="As Llama (GGUF architecture llama)."),
]
