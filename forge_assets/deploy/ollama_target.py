"""Ollama: upload the GGUF as a blob, create the tag with a TEMPLATE, SYSTEM and PARAMETERs, smoke-test it.

The tag's system prompt and sampling parameters are its deploy settings (deploy/settings.py's Generation: forge.yaml's
deploy.system/deploy.parameters, over them deploy.languages.<lang>): SYSTEM is the system prompt, the PARAMETERs are
every set value in Ollama's names (temperature, top_p, top_k, min_p, repeat_penalty, num_predict from max_tokens,
num_ctx, and stop: the TEMPLATE's own stops plus the configured ones). `modelfile` writes the same as Modelfile text.

The TEMPLATE is Go text/template code that renders a conversation exactly as the training chat template
(Qwen2.5-Instruct's Jinja template, rendered by transformers) does: the system turn with the tag's system prompt when
there is none (by default the base template's own: Qwen's identity line only for a template that has it), the
``# Tools`` block with one JSON schema per line, assistant ``<tool_call>`` JSON, ``<tool_response>`` blocks in one
user turn for consecutive tool results, and a FIM branch for ``/api/generate`` with a ``suffix``. forge_assets_tests/test_deploy/test_ollama_template.py executes it with Go's
text/template, fed as Ollama feeds it, and compares it byte for byte with transformers.

What Ollama's template cannot reproduce (Ollama hands templates plain Go maps and structs, not the request's JSON):

- JSON objects print with their keys sorted: tool-call arguments, tool properties and JSON-schema objects
  (the Jinja template keeps insertion order). Tool schemas keep only the fields Ollama's API types have, in their
  order (type, function{name, description, parameters{type, properties, required}}; a property's anyOf, type,
  items, description, enum, properties, required); other fields (e.g. transformers' ``return``, ``nullable``,
  ``default``) are dropped. `ollama_view` gives the conversation as the template sees it: render training data
  from that view and training and serving agree byte for byte.
- Strings inside JSON are escaped with Go's %q, which equals Python's json.dumps(ensure_ascii=False) except for
  control characters other than \\n \\r \\t \\b \\f, DEL and characters Go counts as non-printable (e.g. U+00A0,
  zero-width spaces, U+2028): Go escapes those, Python does not. Go's own `json` would escape <, > and &.
- Numbers are float64: integral floats print as integers (2.0 -> 2), magnitudes below 1e-4 or from 1e21 print in
  another notation, and integers beyond 2**53 lose precision.
- Ollama merges consecutive messages of one role (tool results excepted) with "\\n\\n" before rendering.
"""

from __future__ import annotations

import contextlib
import json
import math
import urllib.error
import urllib.request
from pathlib import Path

from forge_assets.chat import EOT, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FILE_SEP, IM_END, IM_START, REPO_NAME


class OllamaDeployError(RuntimeError):
    """Ollama refused or failed a step; the message says which and how to fix it."""


QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2.5-7B-Instruct), the training template
# Forge's Ollama TEMPLATE is proven against; a model's template that renders the probes below as this one does counts
# as Qwen2.5's.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object "
    "with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" "
    "and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

FIM_BRANCH = FIM_PREFIX + "{{ .Prompt }}" + FIM_SUFFIX + "{{ .Suffix }}" + FIM_MIDDLE
FIM_STOPS = [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD, FILE_SEP, REPO_NAME]
_SUFFIX_BRANCH = "{{- if .Suffix }}"


def fim_branch(scheme=None) -> str:
    """The TEMPLATE's FIM branch (a PSM prompt of .Prompt and .Suffix) in a base's FIM tokens (fim_tokens.FimScheme;
    None: Qwen's, FIM_BRANCH)."""
    return FIM_BRANCH if scheme is None else scheme.psm("{{ .Prompt }}", "{{ .Suffix }}")


def fim_stops(scheme) -> list[str]:
    """What a FIM completion of this scheme may end with: its FIM, pad and middle-end tokens and the file/repository ones."""
    f = scheme.family
    return list(dict.fromkeys(t for t in (f.prefix, f.suffix, f.middle, f.pad, f.eot, scheme.file, scheme.repo) if t)) if f else []
# Which architectures' LoRA adapters Ollama's create applies (its safetensors adapter converter: llama, whose GGUF
# architecture Mistral shares) is the registry's `ollama_adapter` (forge_assets/architectures); any other family
# (qwen2, qwen3, qwen3_moe, ...) is deployed as a merged GGUF.

# The chat part: Ollama feeds it {System, Messages, Tools, ...} (template/template.go, Execute). It does not read
# .System, which joins *every* system message; like the Jinja template it takes the first message when that is a
# system one (Ollama puts a model's SYSTEM there too) and renders later system messages as turns. `$rest` (the
# messages from this one on) gives the next message without arithmetic; `$prev` is the previous one's role. A last
# assistant message is left open (Ollama's prefill: the reply continues it); otherwise the reply turn is opened.
# The `{{ if .ToolCalls }}` block starts with "<tool_call>" text: Ollama's tool parser takes its tag from there.
_QWEN25_CHAT = """
{{- $system := %(default_system)s }}
{{- if and .Messages (eq (index .Messages 0).Role "system") }}{{ $system = (index .Messages 0).Content }}{{ end -}}
<|im_start|>system
{{ $system }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{{ template "tool" . }}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ $prev := "" }}
{{- range $i, $_ := .Messages }}
{{- $rest := slice $.Messages $i }}
{{- if eq .Role "tool" }}
{{- if ne $prev "tool" }}<|im_start|>user{{ end }}
<tool_response>
{{ .Content }}
</tool_response>
{{- if or (eq (len $rest) 1) (ne (index $rest 1).Role "tool") }}<|im_end|>
{{ end }}
{{- else if eq .Role "assistant" }}<|im_start|>assistant
{{- if or .Content (not .ToolCalls) }}
{{ .Content }}
{{- end }}
{{- if .ToolCalls }}
{{- range .ToolCalls }}
<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ template "object" .Function.Arguments }}}
</tool_call>
{{- end }}
{{- end }}
{{- if gt (len $rest) 1 }}<|im_end|>
{{ end }}
{{- else if or (eq .Role "user") (and (eq .Role "system") $i) }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- $prev = .Role }}
{{- end }}
{{- if ne $prev "assistant" }}<|im_start|>assistant
{{ end }}"""

# JSON as Python's json.dumps(ensure_ascii=False) writes it (", " and ": "), for the values Ollama hands templates:
# maps (keys sorted by text/template), []interface{}, strings (%q), and numbers/booleans/null through Ollama's `json`.
_JSON_DEFINES = """
{{- define "object" }}{{ "{" }}{{ $sep := "" }}{{ range $k, $v := . }}{{ $sep }}{{ printf "%q" $k }}: {{ template "json" $v }}{{ $sep = ", " }}{{ end }}{{ "}" }}{{ end }}
{{- define "json" }}{{ $t := printf "%T" . }}
{{- if eq $t "string" }}{{ printf "%q" . }}
{{- else if eq $t "map[string]interface {}" }}{{ template "object" . }}
{{- else if eq $t "[]interface {}" }}[{{ $sep := "" }}{{ range . }}{{ $sep }}{{ template "json" . }}{{ $sep = ", " }}{{ end }}]
{{- else }}{{ json . }}
{{- end }}{{ end }}
{{- define "strings" }}[{{ $sep := "" }}{{ range . }}{{ $sep }}{{ printf "%q" . }}{{ $sep = ", " }}{{ end }}]{{ end }}
{{- define "tool" }}{"type": {{ printf "%q" .Type }}, "function": {"name": {{ printf "%q" .Function.Name }}
{{- if .Function.Description }}, "description": {{ printf "%q" .Function.Description }}{{ end -}}
, "parameters": {{ template "params" .Function.Parameters }}}}{{ end }}
{{- define "params" }}{"type": {{ printf "%q" .Type }}, "properties": {{ template "props" .Properties }}
{{- if .Required }}, "required": {{ template "strings" .Required }}{{ end }}
{{- if .Defs }}, "$defs": {{ template "json" .Defs }}{{ end }}
{{- if .Items }}, "items": {{ template "json" .Items }}{{ end }}}{{ end }}
{{- define "props" }}{{ "{" }}{{ $sep := "" }}{{ range $k, $v := . }}{{ $sep }}{{ printf "%q" $k }}: {{ template "prop" $v }}{{ $sep = ", " }}{{ end }}{{ "}" }}{{ end }}
{{- define "prop" }}{{ "{" }}{{ $sep := "" }}
{{- if .AnyOf }}{{ $sep }}"anyOf": [{{ $s := "" }}{{ range .AnyOf }}{{ $s }}{{ template "prop" . }}{{ $s = ", " }}{{ end }}]{{ $sep = ", " }}{{ end }}
{{- if .Type }}{{ $sep }}"type": {{ if eq (len .Type) 1 }}{{ printf "%q" (index .Type 0) }}{{ else }}{{ template "strings" .Type }}{{ end }}{{ $sep = ", " }}{{ end }}
{{- if .Items }}{{ $sep }}"items": {{ template "json" .Items }}{{ $sep = ", " }}{{ end }}
{{- if .Description }}{{ $sep }}"description": {{ printf "%q" .Description }}{{ $sep = ", " }}{{ end }}
{{- if .Enum }}{{ $sep }}"enum": {{ template "json" .Enum }}{{ $sep = ", " }}{{ end }}
{{- if .Properties }}{{ $sep }}"properties": {{ template "props" .Properties.ToMap }}{{ $sep = ", " }}{{ end }}
{{- if .Required }}{{ $sep }}"required": {{ template "strings" .Required }}{{ end }}
{{- "}" }}{{ end }}"""


def go_string(text: str) -> str:
    """text as a Go interpreted string literal: JSON's escapes (\\" \\\\ \\n \\t \\uXXXX ...) are Go's too, and Go takes
    the other characters raw."""
    return json.dumps(text, ensure_ascii=False)


def qwen25_template(fim=True, default_system: str | None = QWEN25_DEFAULT_SYSTEM) -> str:
    """Ollama's TEMPLATE for Qwen2.5's chat format; with fim (True: Qwen's FIM tokens, or a base's fim_tokens.FimScheme
    with FIM tokens), a `{{ if .Suffix }}` FIM branch for generate+suffix. default_system is the system turn's text
    when a conversation has no system message (the tag's system prompt; None: an empty system turn)."""
    chat = _QWEN25_CHAT.replace("%(default_system)s", go_string(default_system or "")).strip("\n")
    branch = fim_branch(None if fim is True else fim) if fim else ""
    body = (_SUFFIX_BRANCH + branch + "\n{{- else }}\n" + chat + "\n{{- end }}") if fim else chat
    return body + _JSON_DEFINES


# ---- what Ollama's template sees, as Python data ----

def _number(v):
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) < 1e21:
        return int(v)  # Go float64: 2.0 prints as 2
    return v


def _value(v):
    """A JSON value as Ollama's template prints it: objects with sorted keys, integral floats as integers."""
    if isinstance(v, dict):
        return {str(k): _value(v[k]) for k in sorted(v, key=str)}
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v if isinstance(v, (bool, str)) or v is None else _number(v)


def _truthy(v) -> bool:
    return bool(v) if isinstance(v, (dict, list, str)) else v is not None


def _prop(p: dict) -> dict:
    out: dict = {}
    if p.get("anyOf"):
        out["anyOf"] = [_prop(x) for x in p["anyOf"]]
    t = p.get("type")
    if t:
        out["type"] = t if isinstance(t, str) else (t[0] if len(t) == 1 else list(t))
    if _truthy(p.get("items")):
        out["items"] = _value(p["items"])
    if p.get("description"):
        out["description"] = p["description"]
    if p.get("enum"):
        out["enum"] = _value(list(p["enum"]))
    if isinstance(p.get("properties"), dict):
        out["properties"] = {k: _prop(p["properties"][k]) for k in sorted(p["properties"])}
    if p.get("required"):
        out["required"] = list(p["required"])
    return out


def _tool(tool: dict) -> dict:
    fn = tool.get("function") or {}
    params = fn.get("parameters") or {}
    out_params: dict = {"type": params.get("type", ""),
                        "properties": {k: _prop(v) for k, v in sorted((params.get("properties") or {}).items())}}
    if params.get("required"):
        out_params["required"] = list(params["required"])
    if _truthy(params.get("$defs")):
        out_params["$defs"] = _value(params["$defs"])
    if _truthy(params.get("items")):
        out_params["items"] = _value(params["items"])
    out_fn: dict = {"name": fn.get("name", "")}
    if fn.get("description"):
        out_fn["description"] = fn["description"]
    out_fn["parameters"] = out_params
    return {"type": tool.get("type", ""), "function": out_fn}


def ollama_view(messages: list[dict], tools: list[dict] | None = None) -> tuple[list[dict], list[dict] | None]:
    """The conversation as Ollama's template sees it, in the shape the Jinja template takes.

    Roles lowercased; consecutive messages of one role (tool results excepted) merged with "\\n\\n" (the first
    one's tool calls kept, as Ollama's collate does); tool-call arguments and tool schemas as `_value`/`_tool`
    normalize them. Rendering this view with the training template gives exactly what the Ollama TEMPLATE renders.
    """
    out: list[dict] = []
    for m in messages:
        role = str(m.get("role", "")).lower()
        content = m.get("content") or ""
        if out and out[-1]["role"] == role and role != "tool":
            out[-1]["content"] += "\n\n" + content
            continue
        view = {"role": role, "content": content}
        calls = []
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            args = fn.get("arguments")
            if isinstance(args, str):
                args = json.loads(args) if args.strip() else {}
            calls.append({"function": {"name": fn.get("name", ""), "arguments": _value(args or {})}})
        if calls:
            view["tool_calls"] = calls
        out.append(view)
    return out, ([_tool(t) for t in tools] if tools is not None else None)


# ---- the model folder: chat template, special tokens, architecture ----

def _chat_template(model_dir: Path) -> str:
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = model_dir / "tokenizer_config.json"
    tpl = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template") if cfg.is_file() else None
    if isinstance(tpl, list):
        tpl = next((t.get("template") for t in tpl if t.get("name") == "default"), None)
    return tpl if isinstance(tpl, str) else ""


def _special_tokens(model_dir: Path) -> set[str]:
    specials: set[str] = set()
    if (model_dir / "tokenizer.json").is_file():
        added = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
        specials |= {t["content"] for t in added if t.get("special")}
    if (model_dir / "tokenizer_config.json").is_file():
        cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        specials |= {t.get("content") for t in (cfg.get("added_tokens_decoder") or {}).values() if t.get("content")}
    return specials


def architecture(model_dir: Path) -> str:
    """The model's architecture (config.json model_type: qwen2, qwen3, llama, ...), or "" when it does not say."""
    cfg = Path(model_dir) / "config.json"
    return str(json.loads(cfg.read_text(encoding="utf-8")).get("model_type", "")) if cfg.is_file() else ""


_PROBE_TOOL = {"type": "function", "function": {"name": "read_file", "description": "Read a file.", "parameters": {
    "type": "object", "properties": {"path": {"type": "string", "description": "Path."}}, "required": ["path"]}}}
_PROBES: list[tuple[list[dict], list[dict] | None]] = [
    ([{"role": "user", "content": "hi"}], None),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
      {"role": "assistant", "content": "a1"}, {"role": "system", "content": "S2"}, {"role": "user", "content": "u2"}], None),
    ([{"role": "user", "content": "u"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "read_file", "arguments": {"path": "a.py"}}},
                                                         {"type": "function", "function": {"name": "read_file", "arguments": {"path": "b.py"}}}]},
      {"role": "tool", "content": "A"}, {"role": "tool", "content": "B"},
      {"role": "assistant", "content": "ok", "tool_calls": [{"type": "function", "function": {"name": "read_file", "arguments": {"path": "c.py"}}}]},
      {"role": "tool", "content": "C"}], [_PROBE_TOOL]),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}], [_PROBE_TOOL]),
]


def _render(template: str, messages: list[dict], tools: list[dict] | None) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=template, add_generation_prompt=True)
    return rendered[0]


def own_default_system(chat_template: str | None) -> str | None:
    """The system prompt chat_template adds to a conversation without one (deploy/settings.py's default_system)."""
    from forge_assets.deploy.settings import default_system

    return default_system(chat_template) if chat_template else None


def _qwen25_mismatch(chat_template: str) -> str | None:
    """None when chat_template renders every probe as Qwen2.5's template does (with its own default system prompt in
    place of Qwen's identity line, e.g. a ChatML fine-tune of another family); else where the first one differs."""
    if not chat_template:
        return "the model has no chat template"
    own = own_default_system(chat_template)
    for i, (messages, tools) in enumerate(_PROBES):
        want = _render(QWEN25_CHAT_TEMPLATE, messages, tools)
        if own and own != QWEN25_DEFAULT_SYSTEM:
            want = want.replace(QWEN25_DEFAULT_SYSTEM, own)
        try:
            got = _render(chat_template, messages, tools)
        except Exception as exc:  # jinja2 errors: the template is not Qwen2.5's
            return f"probe {i} does not render ({type(exc).__name__}: {exc})"
        if got != want:
            at = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return f"probe {i} differs at character {at}: {got[at:at + 40]!r} where Qwen2.5 renders {want[at:at + 40]!r}"
    return None


_OWN = object()  # template_for: the chat template's own default system prompt


def template_for(model_dir: Path, system=_OWN) -> tuple[str, list[str]]:
    """Ollama's TEMPLATE and stop tokens, derived from the tokenizer's chat template and special tokens.

    The TEMPLATE's default system turn (a conversation without a system message) is `system` (the tag's system prompt;
    None: an empty one), by default the chat template's own default (Qwen's identity line for Qwen2.5's template, the
    other's for a ChatML template with another default: never Qwen's line for a template that does not have it).

    The chat template must render as Qwen2.5-Instruct's does (checked on probe conversations; its own default system
    prompt may differ). Stops: <|im_end|> and
    <|endoftext|>; with FIM tokens in the vocabulary (any family's, ``fim_tokens.scheme_of_folder``) the TEMPLATE gets
    a FIM branch in those tokens and the stops the FIM and repo tokens, which a FIM completion may end with; without
    them there is no FIM branch, so Ollama answers a generate with a suffix as the model cannot do FIM.
    """
    model_dir = Path(model_dir)
    chat = _chat_template(model_dir)
    specials = _special_tokens(model_dir)
    if IM_START not in specials or IM_END not in specials:
        raise OllamaDeployError(f"{model_dir}: the tokenizer has no {IM_START}/{IM_END} special tokens, so it is not a Qwen "
                                "(ChatML) tokenizer and Forge cannot derive an Ollama TEMPLATE for it. Fix: use a Qwen2.5 base model.")
    why = _qwen25_mismatch(chat)
    if why is not None:
        qwen3 = "<think>" in chat
        raise OllamaDeployError(
            f"{model_dir}: its chat template does not render as Qwen2.5-Instruct's ({why}). Forge derives Ollama TEMPLATEs "
            f"for Qwen2.5's chat format only{' (Qwen3 thinking templates are not supported yet)' if qwen3 else ''}, since a "
            "TEMPLATE that renders differently from training degrades the model. Fix: deploy it with deploy.target: "
            "llama-server (it renders the GGUF's own chat template), or train on a Qwen2.5 base.")
    from forge_assets.fim_tokens import scheme_of_folder

    scheme = scheme_of_folder(model_dir)
    stops = [IM_END] + [t for t in [EOT] + fim_stops(scheme) if t in specials]
    default = own_default_system(chat) if system is _OWN else system
    return qwen25_template(fim=scheme if scheme.has_fim else False, default_system=default), stops


# deploy.parameters' keys as Ollama's option names (num_ctx and stop: see `parameters_for`).
OLLAMA_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                "repeat_penalty": "repeat_penalty", "max_tokens": "num_predict"}


def parameters_for(parameters: dict, stops: list[str], num_ctx: int) -> dict:
    """The tag's Ollama PARAMETERs from its generation parameters (deploy/settings.py's Generation.parameters): stop is
    the TEMPLATE's stops followed by the configured extra ones, num_ctx the configured one or `num_ctx` (the deploy's
    context), max_tokens becomes num_predict; an unset key is left to Ollama's default."""
    out: dict = {"stop": list(dict.fromkeys([*stops, *(parameters.get("stop") or [])]))}
    out.update({OLLAMA_NAMES[k]: v for k, v in parameters.items() if k in OLLAMA_NAMES})
    out["num_ctx"] = int(parameters.get("num_ctx") or num_ctx)
    return out


def _modelfile_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value) if isinstance(value, float) else str(value)


def modelfile(from_: str, template: str, system: str | None, parameters: dict, adapters: list[str] | None = None) -> str:
    """The Modelfile equivalent of the create request (what `ollama show --modelfile <tag>` prints, in Ollama's syntax):
    FROM, ADAPTER, TEMPLATE, SYSTEM (when the tag has a system prompt) and one PARAMETER line per value (stop: one line
    per stop string)."""
    lines = [f"FROM {from_}", *(f"ADAPTER {a}" for a in adapters or [])]
    lines.append(f'TEMPLATE """{template}"""')
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_modelfile_value(v)}")
    return "\n".join(lines) + "\n"


def _default_generation(model_dir: Path):
    """The settings of a tag deployed without any (forge.yaml's defaults: temperature 0.2, the base template's own
    system prompt)."""
    from forge_assets.config import DeployConfig
    from forge_assets.deploy.settings import generation

    return generation(DeployConfig(), "", _chat_template(model_dir) or None)


def _adapter_files(adapter: Path) -> dict[str, Path]:
    adapter = Path(adapter)
    if adapter.is_file():
        return {adapter.name: adapter}
    files = {p.name: p for p in sorted(adapter.glob("*.safetensors"))} | {
        p.name: p for p in [adapter / "adapter_config.json"] if p.is_file()}
    if not any(n.endswith(".safetensors") for n in files):
        raise OllamaDeployError(f"{adapter}: no adapter found (a .gguf LoRA file, or a folder with adapter_model.safetensors "
                                "and adapter_config.json). Fix: pass the adapter the training stage wrote.")
    return files


SMOKE_TOOL = {"type": "function", "function": {"name": "run_tests", "description": "Run the project's tests.", "parameters": {
    "type": "object", "properties": {"path": {"type": "string", "description": "Test file or folder."}}, "required": ["path"]}}}
SMOKE_FIM = {"prompt": "def add(a, b):\n    ", "suffix": "\n\n\nprint(add(1, 2))\n"}


def deploy(gguf: Path, tag: str, model_dir: Path, host: str, latest_tag: str | None = None, num_ctx: int = 32768,
           adapter: Path | None = None, generation=None) -> dict:
    """Create `tag` on the Ollama server at host; smoke-test a chat (with a tool offered) and a FIM completion;
    then point latest_tag at it.

    generation is the tag's system prompt and sampling parameters (deploy/settings.py's Generation, from
    service.generation_settings; None: forge.yaml's defaults for model_dir's chat template): the tag gets SYSTEM (and
    the TEMPLATE's default system turn) = its system prompt, and a PARAMETER per set value (`parameters_for`). The
    returned record holds the `modelfile` text those make, its `parameters`, `system` and `generation`.

    gguf is the merged model (FROM), or with adapter the base model it applies to: Ollama applies LoRA adapters
    (create's `adapters`) only for llama/mistral/gemma; for Qwen (qwen2, qwen3) deploy a merged GGUF. num_ctx is the
    context the tag serves with (Ollama caps it at the model's trained context).

    latest_tag is copied only after the new tag answered properly, so any failure leaves it on the previous
    model; a new tag that fails its smoke test is deleted again.
    """
    import httpx
    import ollama

    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1:
        raise OllamaDeployError(f"num_ctx must be a positive whole number of tokens, not {num_ctx!r}. Fix: set deploy.context. {_untouched(latest_tag)}")
    from forge_assets.architectures import FAMILIES, lookup

    arch = architecture(model_dir)
    fam = lookup(arch)
    if adapter is not None and not (fam and fam.ollama_adapter):
        takes = sorted(t for f in FAMILIES.values() if f.ollama_adapter for t in f.model_types)
        raise OllamaDeployError(
            f"Ollama cannot apply a LoRA adapter to a {arch or 'model of unknown architecture'} base: its create applies "
            f"adapters only for {', '.join(takes)}, and Qwen adapters load with no effect. Fix: set "
            f"deploy.merge: true so Forge merges the adapter and deploys the merged GGUF. {_untouched(latest_tag)}")
    gen = generation if generation is not None else _default_generation(model_dir)
    template, stops = template_for(model_dir, system=gen.system)
    params = parameters_for(gen.parameters, stops, num_ctx)
    num_ctx = params["num_ctx"]
    text = modelfile(str(gguf), template, gen.system, params, [str(adapter)] if adapter is not None else None)
    fim = _SUFFIX_BRANCH in template
    client = ollama.Client(host=host)
    created = False
    smoke: dict = {}
    try:
        digest = client.create_blob(gguf)
        adapters = {name: client.create_blob(path) for name, path in _adapter_files(adapter).items()} if adapter is not None else None
        client.create(model=tag, files={gguf.name: digest}, adapters=adapters, template=template, system=gen.system,
                      parameters=params)
        created = True
        step = "the smoke-test chat"
        reply = client.chat(model=tag, messages=[{"role": "user", "content": "Write a hello world function."}], tools=[SMOKE_TOOL],
                            options={"num_predict": 16, "temperature": 0})
        smoke = {"reply": reply["message"]["content"], "done_reason": reply.get("done_reason")}
        _check_stopped(tag, "chat", smoke["reply"], stops)
        if fim:
            step = "the smoke-test FIM completion"
            out = client.generate(model=tag, prompt=SMOKE_FIM["prompt"], suffix=SMOKE_FIM["suffix"],
                                  options={"num_predict": 16, "temperature": 0})
            smoke["fim"] = {"reply": out["response"], "done_reason": out.get("done_reason")}
            _check_stopped(tag, "FIM completion", smoke["fim"]["reply"], stops)
    except ollama.ResponseError as exc:
        _forget(client, tag, created)
        raise OllamaDeployError(f"Ollama at {host} refused {tag}: {exc.error} (HTTP {exc.status_code}). {_untouched(latest_tag)}") from None
    except (ConnectionError, OSError) as exc:
        raise OllamaDeployError(f"cannot reach Ollama at {host} ({exc}). Fix: start `ollama serve` or set deploy.ollama_host. {_untouched(latest_tag)}") from None
    except httpx.HTTPError as exc:
        _forget(client, tag, created)
        what = step if created else "creating the model"
        raise OllamaDeployError(f"Ollama at {host} failed {what} for {tag} ({type(exc).__name__}: {exc}). {_untouched(latest_tag)}") from None
    except OllamaDeployError as exc:
        _forget(client, tag, created)
        raise OllamaDeployError(f"{exc} {_untouched(latest_tag)}") from None
    if latest_tag:
        client.copy(tag, latest_tag)
    return {"endpoint": host, "tag": tag, "latest_tag": latest_tag, "digest": digest, "stop": stops, "num_ctx": num_ctx,
            "adapters": adapters, "smoke": smoke, "system": gen.system, "parameters": params, "generation": gen.as_dict(),
            "modelfile": text}


def _check_stopped(tag: str, what: str, text: str, stops: list[str]) -> None:
    if any(s in text for s in stops):
        raise OllamaDeployError(f"smoke test: {tag}'s {what} printed a stop token ({stops}) instead of stopping; the TEMPLATE or stops are wrong.")


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
