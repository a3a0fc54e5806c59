"""The chat format Forge trains and serves: Qwen2.5's ChatML, tools and tool calls included.

`CHAT_TEMPLATE` is forge-tiny's chat template. It is Forge's own Jinja text, written to render byte for byte as
Qwen2.5-Instruct's template does (tested against the real file): a system turn (Qwen's default one when the
conversation has none), a ``# Tools`` section with one JSON schema per line inside ``<tools></tools>`` when tools
are given, assistant tool calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` lines, and tool
results as ``<tool_response>`` blocks inside one user turn.

One template is the single source of truth for a base model: it goes into the tokenizer, the GGUF
(``tokenizer.chat_template``) and the Ollama TEMPLATE, datasets render conversations with it, and Forge's server
renders requests with it, so training and serving agree. Rendering goes through transformers' own chat-template
renderer (the one ``tokenizer.apply_chat_template`` uses), so a base model's own template (Qwen2.5, Qwen3) renders
here exactly as it does in transformers.

Qwen3-Coder: `QWEN3_CODER_CHAT_TEMPLATE` is Forge's own Jinja text for Qwen3-Coder's chat format, written to render
byte for byte as Qwen3-Coder's template does (tested against the real file). It has no system turn unless the
conversation has one or tools are given (then Qwen3-Coder's default one); tools are listed as ``<function>`` blocks
with ``<name>``, ``<description>`` and one ``<parameter>`` block per property (any other schema key as its own
``<key>value</key>`` line); an assistant's tool call is a ``<tool_call>`` block holding ``<function=NAME>``
and one ``<parameter=P>`` block per argument, each tag and each value on its own lines, a value written as text
(an object or array as JSON); consecutive tool results are ``<tool_response>`` blocks in one user turn. Datasets
are still rendered in Forge's ChatML template; `retemplate` renders them again in a Qwen3-Coder base's template, so
it trains on XML tool calls. `parse_tool_calls` reads both forms back, typing Qwen3-Coder's text values by the
request's tool schemas.
"""

from __future__ import annotations

import ast
import json
import math
import re
import uuid
from pathlib import Path

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"
REPO_NAME, FILE_SEP = "<|repo_name|>", "<|file_sep|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP]
STOP_TOKENS = [IM_END, EOT]
FIM_STOP_TOKENS = [EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD, FILE_SEP, REPO_NAME, IM_START, IM_END]
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TOOLS_INTRO = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
               "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


def _j(s: str) -> str:
    """A Python string as a Jinja string literal."""
    return json.dumps(s)


# Forge's template: the system turn (with the tool list), then each turn. Whitespace is controlled by `-`.
CHAT_TEMPLATE = (
    "{%- set has_system = messages and messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + (messages[0].content if has_system else " + _j(DEFAULT_SYSTEM) + ") -}}"
    "{%- if tools -%}"
    "{{- " + _j(TOOLS_INTRO) + " -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- " + _j(TOOLS_OUTRO) + " -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'tool' -%}"
    "{%- set prev = messages[loop.index0 - 1].role if not loop.first else '' -%}"
    "{%- set next = messages[loop.index0 + 1].role if not loop.last else '' -%}"
    "{{- ('<|im_start|>user' if prev != 'tool' else '') + '\\n<tool_response>\\n' + m.content + '\\n</tool_response>'"
    " + ('<|im_end|>\\n' if next != 'tool' else '') -}}"
    "{%- elif m.role == 'assistant' and m.tool_calls -%}"
    "{{- '<|im_start|>assistant' + ('\\n' + m.content if m.content else '') -}}"
    "{%- for call in m.tool_calls -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + fn.name + '\", \"arguments\": ' + (fn.arguments | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif not (m.role == 'system' and loop.first) -%}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

QWEN3_CODER_DEFAULT_SYSTEM = "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks."
QWEN3_CODER_TOOLS_INTRO = "\n\n# Tools\n\nYou have access to the following tools:\n\n<tools>"
QWEN3_CODER_TOOLS_OUTRO = (
    "\n</tools>\n\nIf you choose to call a tool ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
    "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nvalue_2\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: the tool calling block MUST begin with an opening <tool_call> "
    "tag and end with a closing </tool_call> tag.\n- Required parameters MUST be specified\n- You may provide optional "
    "reasoning for your function call in natural language BEFORE the function call, but NOT after\n- If there is no "
    "function call available, answer the question like normal with your current knowledge and do not tell the user "
    "about function calls\n</IMPORTANT>")

# Forge's Qwen3-Coder template. `value(v)`: an object or array as JSON, anything else as Python's str() (Jinja's
# `string`); `extra(d, skip)`: a schema's other keys as `<key>value</key>` lines.
QWEN3_CODER_CHAT_TEMPLATE = (
    "{%- macro value(v) -%}"
    "{{- (v | tojson) if v is mapping or (v is sequence and v is not string) else (v | string) -}}"
    "{%- endmacro -%}"
    "{%- macro extra(d, skip) -%}"
    "{%- if d is mapping -%}{%- for k in d if k not in skip -%}"
    "{{- '\\n<' ~ k ~ '>' ~ value(d[k]) ~ '</' ~ k ~ '>' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set has_system = messages[0].role == 'system' -%}"
    "{%- set turns = messages[1:] if has_system else messages -%}"
    "{%- if has_system or tools -%}"
    "{{- '<|im_start|>system\\n' + (messages[0].content if has_system else " + _j(QWEN3_CODER_DEFAULT_SYSTEM) + ") -}}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{{- " + _j(QWEN3_CODER_TOOLS_INTRO) + " -}}"
    "{%- for tool in tools -%}"
    "{%- set fn = tool.function if tool.function is defined else tool -%}"
    "{{- '\\n<function>\\n<name>' ~ fn.name ~ '</name>' -}}"
    "{%- if fn.description is defined -%}{{- '\\n<description>' ~ (fn.description | trim) ~ '</description>' -}}{%- endif -%}"
    "{{- '\\n<parameters>' -}}"
    "{%- if fn.parameters is mapping and fn.parameters.properties is mapping -%}"
    "{%- for name, spec in fn.parameters.properties | items -%}"
    "{{- '\\n<parameter>\\n<name>' ~ name ~ '</name>' -}}"
    "{%- if spec.type is defined -%}{{- '\\n<type>' ~ (spec.type | string) ~ '</type>' -}}{%- endif -%}"
    "{%- if spec.description is defined -%}{{- '\\n<description>' ~ (spec.description | trim) ~ '</description>' -}}{%- endif -%}"
    "{{- extra(spec, ['name', 'type', 'description']) + '\\n</parameter>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- extra(fn.parameters, ['type', 'properties']) + '\\n</parameters>' -}}"
    "{{- extra(fn, ['type', 'name', 'description', 'parameters']) + '\\n</function>' -}}"
    "{%- endfor -%}"
    "{{- " + _j(QWEN3_CODER_TOOLS_OUTRO) + " -}}"
    "{%- endif -%}"
    "{%- if has_system or tools -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m.role == 'tool' -%}"
    "{{- ('<|im_start|>user\\n' if not loop.first and loop.previtem.role != 'tool' else '') -}}"
    "{{- '<tool_response>\\n' + m.content + '\\n</tool_response>\\n' -}}"
    "{{- ('<|im_end|>\\n' if loop.last or loop.nextitem.role != 'tool' else '') -}}"
    "{%- elif m.role == 'assistant' and m.tool_calls is defined and m.tool_calls is iterable and m.tool_calls | length > 0 -%}"
    "{{- '<|im_start|>assistant' -}}"
    "{%- if m.content is string and m.content | trim | length > 0 -%}{{- '\\n' + (m.content | trim) + '\\n' -}}{%- endif -%}"
    "{%- for call in m.tool_calls -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{{- '\\n<tool_call>\\n<function=' + fn.name + '>\\n' -}}"
    "{%- if fn.arguments is defined -%}{%- for k, v in fn.arguments | items -%}"
    "{{- '<parameter=' + k + '>\\n' + value(v) + '\\n</parameter>\\n' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '</function>\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


class ChatTemplateError(ValueError):
    """A conversation the chat template cannot render; the message names the turn and the fix."""


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Messages as the template expects them: content a string (OpenAI content parts joined), tool-call arguments a
    JSON object (OpenAI clients send them as a JSON string; Qwen's template writes them with `tojson`, which would
    quote a string a second time, so they are parsed first, as llama.cpp's server does)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"message {i} has no `role`: {str(m)[:200]}. Fix: every message needs role and content.")
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
        m["content"] = "" if content is None else str(content)
        calls = []
        for call in m.get("tool_calls") or []:
            fn = dict(call.get("function", call))
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except ValueError:
                    pass  # kept as the string the client sent
            fn["arguments"] = args if args is not None else {}
            calls.append({**call, "function": fn} if "function" in call else fn)
        if calls:
            m["tool_calls"] = calls
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out


def render_chat(messages: list[dict], add_generation_prompt: bool = False, tools: list[dict] | None = None,
                template: str | None = None) -> str:
    """A conversation rendered exactly as the tokenizer's chat template renders it (transformers' renderer).

    template defaults to Forge's CHAT_TEMPLATE (forge-tiny's); pass a base model's own template to render for it.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template([normalize_messages(messages)], tools=tools or None, chat_template=template or CHAT_TEMPLATE,
                                            add_generation_prompt=add_generation_prompt)
    except ChatTemplateError:
        raise
    except Exception as exc:  # jinja2 errors (TypeError on a missing content, UndefinedError, TemplateError)
        raise ChatTemplateError(f"the chat template cannot render this conversation ({type(exc).__name__}: {exc}). "
                                "Fix: give every message a role and string content; tool calls need a function name.") from None
    return rendered[0]


def template_of(model_dir: Path) -> str | None:
    """A Hugging Face model folder's own chat template (chat_template.jinja, or tokenizer_config.json's), or None."""
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        tpl = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(tpl, list):  # named templates: the default one
            tpl = next((t.get("template") for t in tpl if t.get("name") == "default"), None)
        return tpl if isinstance(tpl, str) else None
    return None


_TOOL_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S)


def parse_tool_calls(text: str, tools: list[dict] | None = None) -> tuple[str, list[dict]]:
    """Split a model's answer into its text and OpenAI `tool_calls`: Qwen2.5's ``<tool_call>{json}</tool_call>``
    blocks and Qwen3-Coder's ``<tool_call><function=NAME><parameter=P>VALUE</parameter></function></tool_call>`` ones.

    A block that does not parse (JSON that does not load or names no function; a function block not closed, or with
    anything but parameters in it) is left in the text: the client sees what the model wrote rather than a call that
    would fail. The closing ``</tool_call>`` of the last block may be missing (generation stopped there). A
    Qwen3-Coder parameter's value is text; `tools` (the request's) gives it its JSON type, as vLLM's qwen3_coder parser
    does: integer, number, boolean, object, array and null values become those JSON values, a string, an unknown type,
    a parameter the schema does not name, or a value that does not convert stays a string. Arguments come back as a
    JSON string, as OpenAI sends them.
    """
    return _split_tool_calls(text, tools, xml=True)


_FUNCTION_OPEN, _PARAMETER_OPEN = re.compile(r"<function=([^<>\n]+)>"), re.compile(r"<parameter=([^<>\n]+)>")
_SPACE = re.compile(r"\s*")
_INTEGER, _NUMBER = re.compile(r"[+-]?[0-9]+"), re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _split_tool_calls(text: str, tools: list[dict] | None, xml: bool) -> tuple[str, list[dict]]:
    calls, kept, pos = [], [], 0
    for m in _TOOL_CALL.finditer(text):
        call = _json_call(m.group(1)) or (_xml_call(m.group(1), tools) if xml else None)
        if call is None:
            continue
        name, args = call
        kept.append(text[pos:m.start()])
        pos = m.end()
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
    kept.append(text[pos:])
    return "".join(kept).strip() if calls else text, calls


def _json_call(body: str) -> tuple[str, object] | None:
    """A ``{"name": ..., "arguments": {...}}`` block's name and arguments, or None."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    return obj["name"], obj.get("arguments", obj.get("parameters", {}))


def _xml_call(body: str, tools: list[dict] | None) -> tuple[str, dict] | None:
    """A ``<function=NAME>`` block's name and typed arguments, or None unless the block is whole: parameters, each
    closed, then ``</function>`` and nothing else. A value loses the newline the template puts on each side of it."""
    m = _FUNCTION_OPEN.match(body)
    if not m or not m.group(1).strip():
        return None
    name, pos, args = m.group(1).strip(), m.end(), {}
    schema = _parameter_schemas(tools, name)
    while True:
        pos = _SPACE.match(body, pos).end()
        if body.startswith("</function>", pos):
            return (name, args) if not body[pos + len("</function>"):].strip() else None
        p = _PARAMETER_OPEN.match(body, pos)
        end = body.find("</parameter>", p.end()) if p else -1
        if end < 0 or not p.group(1).strip():
            return None
        key = p.group(1).strip()
        args[key] = _typed(body[p.end():end].removeprefix("\n").removesuffix("\n"), schema.get(key))
        pos = end + len("</parameter>")


def _parameter_schemas(tools: list[dict] | None, name: str) -> dict:
    """The `properties` of the tool called `name` among a request's tools ({} when it is not there)."""
    for tool in tools if isinstance(tools, list) else []:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("name") == name:
            params = fn.get("parameters")
            props = params.get("properties") if isinstance(params, dict) else None
            return props if isinstance(props, dict) else {}
    return {}


def _schema_types(schema) -> list[str]:
    """A JSON schema's types, lower-cased: `type` (a name or a list of them), then those of anyOf/oneOf."""
    if not isinstance(schema, dict):
        return []
    t = schema.get("type")
    types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
    for key in ("anyOf", "oneOf"):
        for alt in schema.get(key) if isinstance(schema.get(key), list) else []:
            types += _schema_types(alt)
    return [x.strip().lower() for x in types]


def _typed(value: str, schema) -> object:
    """A Qwen3-Coder parameter's text as the JSON value its schema's type says (see parse_tool_calls)."""
    types = _schema_types(schema)
    if not types or types == ["string"] or not set(types) & {"integer", "number", "boolean", "object", "array", "null"}:
        return value
    v = value.strip()
    if v in ("null", "None") and ("null" in types or "string" not in types):
        return None
    for t in types:
        if t in ("integer", "number") and _INTEGER.fullmatch(v) and len(v) <= 300:  # int() refuses 4,300 digits and more
            return int(v)
        if t == "number" and _NUMBER.fullmatch(v) and math.isfinite(float(v)):
            return float(v)
        if t == "boolean" and v.lower() in ("true", "false"):
            return v.lower() == "true"
        if t in ("object", "array"):
            obj = _literal(v)
            if isinstance(obj, dict if t == "object" else list):
                return obj
    return value


def _literal(v: str) -> object:
    """JSON as the template writes it, else a Python literal (what vLLM falls back to); None when neither."""
    try:
        return json.loads(v)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(v)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_rendered(text: str) -> tuple[list[dict], list[dict] | None]:
    """The messages (and tools) a text rendered by CHAT_TEMPLATE came from: the inverse of render_chat.

    Qwen's default system turn is dropped (another template adds its own default, or none); tool schemas come back
    from the ``<tools>`` block, assistant ``<tool_call>`` blocks as tool_calls, ``<tool_response>`` blocks as tool
    messages. Raises ChatTemplateError when the text is not such a rendering.
    """
    if not text.startswith(IM_START):
        raise ChatTemplateError("not a chat rendering: it does not start with <|im_start|>")
    messages: list[dict] = []
    tools = None
    for n, chunk in enumerate(text.split(IM_START)[1:]):
        role, _, rest = chunk.partition("\n")
        if IM_END not in rest:
            raise ChatTemplateError(f"turn {n} ({role}) has no <|im_end|>")
        content = rest[: rest.rindex(IM_END)] if IM_END in rest else rest
        if n == 0 and role == "system":
            body, sep, tail = content.partition(TOOLS_INTRO)
            if sep:
                schemas = tail[: tail.rindex(TOOLS_OUTRO)] if TOOLS_OUTRO in tail else tail
                tools = [json.loads(line) for line in schemas.split("\n") if line.strip()]
            if body != DEFAULT_SYSTEM:
                messages.append({"role": "system", "content": body})
            continue
        if role == "user" and content.startswith("\n<tool_response>\n") or (role == "user" and content.startswith("<tool_response>\n")):
            for part in content.split("<tool_response>\n")[1:]:
                messages.append({"role": "tool", "content": part[: part.rindex("\n</tool_response>")]})
            continue
        if role == "assistant" and TOOL_CALL_OPEN in content:
            before, calls = _split_tool_calls(content, None, xml=False)  # Forge's template writes JSON calls
            if calls:
                for c in calls:
                    c["function"]["arguments"] = json.loads(c["function"]["arguments"])
                messages.append({"role": "assistant", "content": before, "tool_calls": [{"type": "function", "function": c["function"]}
                                                                                          for c in calls]})
                continue
        messages.append({"role": role, "content": content})
    return messages, tools


def retemplate(text: str, template: str | None) -> str:
    """A dataset text rendered with Forge's template, rendered again with a base model's own template (a Qwen3
    base trains on Qwen3's rendering); texts that are not chats (code, FIM) come back unchanged."""
    if not template or template == CHAT_TEMPLATE or not text.startswith(IM_START):
        return text
    body, eot = (text[: -len(EOT)], EOT) if text.endswith(EOT) else (text, "")
    messages, tools = parse_rendered(body)
    return render_chat(messages, tools=tools, template=template) + eot
