"""Deploy: serve a language's GGUF under a tag (llama.cpp server or Ollama). Imports no Dagster."""
