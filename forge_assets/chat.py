"""The chat format Forge trains and serves: ChatML with Qwen2.5-style tool calls.

One Jinja template is the single source of truth: it goes into the tokenizer, the GGUF and the
Ollama TEMPLATE, and datasets render conversations with it, so training and serving agree.
"""

from __future__ import annotations

import json

import jinja2

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"
REPO_NAME, FILE_SEP = "<|repo_name|>", "<|file_sep|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP]
STOP_TOKENS = [IM_END, EOT]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + (message.content or '') + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') }}"
    "{%- if message.tool_calls %}"
    "{%- for call in message.tool_calls %}"
    "{%- set fn = call.function if call.function is defined else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + fn.name + '\", \"arguments\": ' + (fn.arguments if fn.arguments is string else fn.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
_env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True)
_template = _env.from_string(CHAT_TEMPLATE)


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """A conversation rendered exactly as the tokenizer's chat template renders it."""
    return _template.render(messages=messages, add_generation_prompt=add_generation_prompt)
