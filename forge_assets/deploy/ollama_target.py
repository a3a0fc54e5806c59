"""Ollama: upload the GGUF as a blob, create the tag with a template and stop tokens, smoke-test a chat."""

from __future__ import annotations

import json
from pathlib import Path

from forge_assets.chat import EOT, IM_END, IM_START


class OllamaDeployError(RuntimeError):
    """Ollama refused or failed a step; the message says which and how to fix it."""


# Go-template rendering of ChatML, the same turns as forge_assets.chat.CHAT_TEMPLATE.
CHATML_TEMPLATE = (
    "{{- if .System }}" + IM_START + "system\n{{ .System }}" + IM_END + "\n{{ end }}"
    "{{- range .Messages }}" + IM_START + "{{ .Role }}\n{{ .Content }}" + IM_END + "\n{{ end }}"
    + IM_START + "assistant\n"
)


def template_for(model_dir: Path) -> tuple[str, list[str]]:
    """Ollama's TEMPLATE and stop tokens, derived from the tokenizer's chat template and special tokens."""
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    chat = cfg.get("chat_template") or ((model_dir / "chat_template.jinja").read_text() if (model_dir / "chat_template.jinja").is_file() else "")
    added = json.loads((model_dir / "tokenizer.json").read_text()).get("added_tokens", []) if (model_dir / "tokenizer.json").is_file() else []
    specials = {t["content"] for t in added if t.get("special")} | {t.get("content") for t in (cfg.get("added_tokens_decoder") or {}).values()}
    if IM_START in chat and IM_END in chat and IM_END in specials:
        stops = [IM_END] + ([EOT] if EOT in specials else [])
        return CHATML_TEMPLATE, stops
    raise OllamaDeployError(f"{model_dir}: the chat template is not ChatML (<|im_start|>/<|im_end|>), so Forge cannot derive an Ollama TEMPLATE for it. Fix: use a Qwen/ChatML base model.")


def deploy(gguf: Path, tag: str, model_dir: Path, host: str, latest_tag: str | None = None) -> dict:
    """Create `tag` on the Ollama server at host from gguf; smoke-test a chat; then point latest_tag at it."""
    import ollama

    template, stops = template_for(model_dir)
    client = ollama.Client(host=host)
    try:
        digest = client.create_blob(gguf)
        client.create(model=tag, files={gguf.name: digest}, template=template,
                      parameters={"stop": stops, "temperature": 0.2, "num_ctx": 2048})
        reply = client.chat(model=tag, messages=[{"role": "user", "content": "Write a hello world function."}],
                            options={"num_predict": 16, "temperature": 0})
    except ollama.ResponseError as exc:
        raise OllamaDeployError(f"Ollama at {host} refused {tag}: {exc.error} (HTTP {exc.status_code}). The previous tags are untouched.") from None
    except (ConnectionError, OSError) as exc:
        raise OllamaDeployError(f"cannot reach Ollama at {host} ({exc}). Fix: start `ollama serve` or set deploy.ollama_host.") from None
    content = reply["message"]["content"]
    if any(s in content for s in stops):
        raise OllamaDeployError(f"smoke test: {tag} printed a stop token ({stops}) instead of stopping; the template is wrong.")
    if latest_tag:
        client.copy(tag, latest_tag)
    return {"endpoint": host, "tag": tag, "latest_tag": latest_tag, "digest": digest, "stop": stops,
            "smoke": {"reply": content, "done_reason": reply.get("done_reason")}}
