"""What a deployment serves with: its system prompt and sampling parameters, resolved once per language.

forge.yaml's ``deploy.system`` and ``deploy.parameters``, overridden key by key by ``deploy.languages.<lang>``, are the one
description every serving path reads (the Ollama Modelfile, the Forge server's per-tag defaults and ``GET /props``, the
mlx-lm and vLLM launch plans, the client configurations). ``deploy.system: null`` means the base model's own default
system prompt, read from its chat template by rendering it (``default_system``): Qwen's identity line for a Qwen
template, nothing for a template without a default (Llama 3's empty system turn, SmolLM2's own line for SmolLM2).

``fingerprint`` is part of the deployment's input key, so a change to these settings alone redeploys (without
retraining or re-exporting: no upstream asset reads them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

PARAMETER_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "num_ctx", "max_tokens", "stop")
_SENTINEL = "\x00FORGE-SYSTEM-SENTINEL\x00"


@dataclass(frozen=True)
class Generation:
    """One language's serving settings: the system prompt (None: none at all) and the sampling parameters that are set
    (keys of PARAMETER_KEYS; an absent key leaves the engine's default)."""

    system: str | None
    parameters: dict = field(default_factory=dict)
    system_source: str = "config"  # "config", "language" (deploy.languages.<lang>.system) or "base template"

    def as_dict(self) -> dict:
        return {"system": self.system, "parameters": dict(self.parameters), "system_source": self.system_source}


def generation(deploy, language: str, template: str | None) -> Generation:
    """The settings `language` is served with under forge.yaml's `deploy` section; `template` is the chat template the
    model was trained with (the base's), whose default system prompt is used when none is configured."""
    params = {k: v for k, v in deploy.parameters.model_dump().items() if v is not None}
    override = deploy.languages.get(language)
    system, source = deploy.system, "config"
    if override is not None:
        params.update({k: v for k, v in override.parameters.model_dump().items() if v is not None})
        if override.system is not None:
            system, source = override.system, "language"
    if system is None:
        system, source = default_system(template), "base template"
    return Generation(system or None, {k: params[k] for k in PARAMETER_KEYS if k in params}, source)


def default_system(template: str | None) -> str | None:
    """The system prompt a chat template adds when a conversation has none, or None when it adds none.

    Renders one user turn without a system message, and with a sentinel system message: the text the template puts where
    the sentinel would go is its default. None for no template (Forge's own ChatML has Qwen's default: see chat.py, and
    a base without a template is served with Forge's), for a template that fails to render, and for an empty default.
    """
    from forge_assets.chat import CHAT_TEMPLATE, ChatTemplateError, render_chat

    tpl = template or CHAT_TEMPLATE
    user = {"role": "user", "content": "hello"}
    try:
        bare = render_chat([user], add_generation_prompt=True, template=tpl)
        marked = render_chat([{"role": "system", "content": _SENTINEL}, user], add_generation_prompt=True, template=tpl)
    except ChatTemplateError:
        return None
    if _SENTINEL not in marked:
        return None
    before, after = marked.split(_SENTINEL, 1)
    if not (bare.startswith(before) and bare.endswith(after)) or len(bare) < len(before) + len(after):
        return None
    found = bare[len(before):len(bare) - len(after)].strip()
    return found or None


def fingerprint(gen: Generation) -> str:
    """A short stable digest of the settings (part of the deployment's input key)."""
    blob = json.dumps({"system": gen.system, "parameters": gen.parameters}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
