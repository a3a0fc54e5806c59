"""Export: Hugging Face model folders to GGUF, quantized with llama.cpp. Imports no Dagster."""
