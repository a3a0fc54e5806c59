"""Ollama: upload the GGUF as a blob, create the tag with a template and stop tokens, smoke-test a chat."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
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
    """Create `tag` on the Ollama server at host from gguf; smoke-test a chat; then point latest_tag at it.

    latest_tag is copied only after the new tag answered properly, so any failure leaves it on the previous
    model; a new tag that fails its smoke test is deleted again.
    """
    import httpx
    import ollama

    template, stops = template_for(model_dir)
    client = ollama.Client(host=host)
    created = False
    try:
        digest = client.create_blob(gguf)
        client.create(model=tag, files={gguf.name: digest}, template=template,
                      parameters={"stop": stops, "temperature": 0.2, "num_ctx": 2048})
        created = True
        reply = client.chat(model=tag, messages=[{"role": "user", "content": "Write a hello world function."}],
                            options={"num_predict": 16, "temperature": 0})
        content = reply["message"]["content"]
        if any(s in content for s in stops):
            raise OllamaDeployError(f"smoke test: {tag} printed a stop token ({stops}) instead of stopping; the template is wrong.")
    except ollama.ResponseError as exc:
        _forget(client, tag, created)
        raise OllamaDeployError(f"Ollama at {host} refused {tag}: {exc.error} (HTTP {exc.status_code}). {_untouched(latest_tag)}") from None
    except (ConnectionError, OSError) as exc:
        raise OllamaDeployError(f"cannot reach Ollama at {host} ({exc}). Fix: start `ollama serve` or set deploy.ollama_host. {_untouched(latest_tag)}") from None
    except httpx.HTTPError as exc:
        _forget(client, tag, created)
        step = "the smoke-test chat" if created else "creating the model"
        raise OllamaDeployError(f"Ollama at {host} failed {step} for {tag} ({type(exc).__name__}: {exc}). {_untouched(latest_tag)}") from None
    except OllamaDeployError as exc:
        _forget(client, tag, created)
        raise OllamaDeployError(f"{exc} {_untouched(latest_tag)}") from None
    if latest_tag:
        client.copy(tag, latest_tag)
    return {"endpoint": host, "tag": tag, "latest_tag": latest_tag, "digest": digest, "stop": stops,
            "smoke": {"reply": content, "done_reason": reply.get("done_reason")}}


def _untouched(latest_tag: str | None) -> str:
    return f"{latest_tag} and the other existing tags are untouched." if latest_tag else "The existing tags are untouched."


def _forget(client, tag: str, created: bool) -> None:
    """Delete a tag this deploy created but could not prove (best effort)."""
    if created:
        with contextlib.suppress(Exception):
            client.delete(tag)


def health(host: str, tag: str, timeout: float = 5.0) -> dict:
    """GET /api/tags on the Ollama server: `{"ok", "health": "up" | "down: <why>", "tags"}`."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/api/tags", timeout=timeout) as resp:
            names = [m.get("name") or m.get("model") for m in json.loads(resp.read()).get("models", [])]
    except urllib.error.HTTPError as exc:
        return {"ok": False, "health": f"down: Ollama at {host} answered HTTP {exc.code} to /api/tags", "tags": []}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        why = "connection refused" if isinstance(reason, ConnectionRefusedError) else str(reason)
        return {"ok": False, "health": f"down: {why} on {host}. Fix: start `ollama serve` or set deploy.ollama_host.", "tags": []}
    if tag not in names:
        return {"ok": False, "health": f"down: Ollama at {host} answers but has no model {tag}. Fix: redeploy with `forge run`.", "tags": names}
    return {"ok": True, "health": "up", "tags": names}
