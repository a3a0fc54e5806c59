"""How a tag's generation settings (deploy/settings.py's `Generation`) are handed to an engine that has no per-tag defaults.

- `with_default_system`: a chat template whose default system prompt is the tag's: a conversation without a system
  message gets one, as Ollama's SYSTEM does. For the engines that take a chat template at launch (mlx-lm's
  ``--chat-template``, vLLM's ``--chat-template``).
- `request_fields`: the settings as OpenAI-style request fields (what a client or a caller must send where the engine
  cannot hold them: a vLLM serving several languages with different values, mlx-lm's repetition penalty and stops).
- `system_for_template`: the system prompt a launch-time template must carry, or None when the base template's own
  default already is the tag's.
"""

from __future__ import annotations

import json

# deploy.parameters' keys as OpenAI-compatible request fields (llama.cpp, vLLM and mlx-lm read these names).
REQUEST_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                 "repeat_penalty": "repetition_penalty", "max_tokens": "max_tokens", "stop": "stop"}


def _jinja_string(text: str) -> str:
    """text as a Jinja string literal. Jinja decodes literals with Python's unicode-escape (after backslash-replacing
    non-ASCII), so JSON's escapes (\\" \\\\ \\n \\uXXXX) with the other characters left raw read back exactly."""
    return json.dumps(text, ensure_ascii=False)


def with_default_system(template: str, system: str) -> str:
    """template with `system` as the first message of any conversation that does not start with a system message.
    The rest renders exactly as template does (it sees the same messages a client sending that system message sends)."""
    head = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
            "{%- set messages = [{'role': 'system', 'content': " + _jinja_string(system) + "}] + messages -%}"
            "{%- endif -%}")
    return head + template


def system_for_template(gen, template: str | None) -> str | None:
    """The system prompt a launch-time chat template must add for gen (deploy/settings.py's Generation), or None when the
    base template is fine as it is: no system is configured (gen.system_source "base template": the template's own
    default is the tag's). An explicitly empty system (deploy.system: "") is "" (an empty system turn, as Ollama's
    TEMPLATE renders it)."""
    if gen is None or gen.system_source == "base template" or template is None:
        return None
    return gen.system or ""


def request_fields(parameters: dict) -> dict:
    """Generation.parameters as OpenAI-compatible request fields (num_ctx has none: it is the server's context)."""
    return {REQUEST_NAMES[k]: v for k, v in parameters.items() if k in REQUEST_NAMES}
