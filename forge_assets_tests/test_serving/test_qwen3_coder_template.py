"""Qwen3-Coder's chat format through Forge: QWEN3_CODER_CHAT_TEMPLATE renders byte for byte as the real template,
XML-style tool calls parse back to OpenAI `tool_calls` typed by the tools' schemas, dataset chats are rendered again
in it for training, a GGUF carries it, and Forge's server renders requests with it and returns its tool calls."""

import json
import os
from pathlib import Path

import pytest

from forge_assets.chat import (
    EOT,
    QWEN3_CODER_CHAT_TEMPLATE,
    ChatTemplateError,
    parse_tool_calls,
    render_chat,
    template_of,
)
from forge_assets_tests.test_serving.scripted import chat_both_ways, scripted_generate

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "chat-templates"


def reference() -> str:
    path = REFERENCE / "Qwen3-Coder.jinja"
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: shared/ must sit beside the checkout")
        pytest.skip(f"{path} not present")
    return path.read_text()


TOOLS = [
    {"type": "function", "function": {
        "name": "read", "description": "  Read a file.\n",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "The file, relative to the repository ünïcode"},
            "limit": {"type": "integer", "minimum": 1, "default": 200},
            "mode": {"type": "string", "enum": ["text", "bytes"]},
            "options": {"type": "object", "properties": {"follow": {"type": "boolean"}}},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        }, "required": ["path"], "additionalProperties": False}, "strict": True}},
    {"type": "function", "function": {"name": "bash", "description": "Run a command",
                                      "parameters": {"type": "object", "properties": {"command": {"type": "string"},
                                                                                      "timeout": {"type": "number"}}}}},
    {"name": "ping", "description": "A schema without the `function` wrapper and without parameters"},
]
READ = {"id": "c1", "type": "function", "function": {"name": "read", "arguments": {
    "path": "app/é.py", "limit": 20, "options": {"follow": True, "depth": 2}, "tags": ["a", "b"]}}}
BASH = {"id": "c2", "type": "function", "function": {"name": "bash", "arguments": "{\"command\": \"ls -la\", \"timeout\": 1.5}"}}
PING = {"id": "c3", "type": "function", "function": {"name": "ping", "arguments": {}}}

# name: (messages, tools)
CONVERSATIONS = {
    "user only": ([{"role": "user", "content": "hi"}], None),
    "system": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], None),
    "tools, no system (Qwen3-Coder's default one)": ([{"role": "user", "content": "read app.py"}], TOOLS),
    "system and tools": ([{"role": "system", "content": "You are Forge."}, {"role": "user", "content": "read app.py"}], TOOLS[:1]),
    "tool round: str/int/object/array arguments, three results in a row": (
        [{"role": "user", "content": "look around"},
         {"role": "assistant", "content": "", "tool_calls": [READ, BASH, PING]},
         {"role": "tool", "tool_call_id": "c1", "content": "x = 1"}, {"role": "tool", "tool_call_id": "c2", "content": "a.py\nb.py"},
         {"role": "tool", "tool_call_id": "c3", "content": "pong"},
         {"role": "assistant", "content": "Done."}, {"role": "user", "content": "more"}], TOOLS),
    "text before a call, one result, late system": (
        [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
         {"role": "assistant", "content": "  Let me look.\n", "tool_calls": [READ]}, {"role": "tool", "content": "r"},
         {"role": "system", "content": "mid"}, {"role": "user", "content": "multi\nline\n\n```py\nx\n```"}], TOOLS[:2]),
    "conversation ending in tool results": (
        [{"role": "user", "content": "run it"}, {"role": "assistant", "content": "Running.", "tool_calls": [BASH]},
         {"role": "tool", "content": "ok"}, {"role": "tool", "content": "also ok"}], TOOLS[1:]),
    "tool calls but no tools given": (
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [PING]}, {"role": "tool", "content": "pong"}], None),
    "empty content": ([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}], TOOLS[2:]),
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("generation", [False, True], ids=["closed", "generation prompt"])
def test_forge_template_renders_byte_identical_to_qwen3_coder(name, generation):
    real = reference()
    msgs, tools = CONVERSATIONS[name]
    ours = render_chat(msgs, generation, tools=tools, template=QWEN3_CODER_CHAT_TEMPLATE)
    assert ours == render_chat(msgs, generation, tools=tools, template=real)
    assert ours.endswith("<|im_start|>assistant\n") == generation
    if tools:
        assert ours.startswith("<|im_start|>system\n") and "\n</tools>\n\nIf you choose to call a tool ONLY reply" in ours
    if name.startswith("tool round"):
        assert ("<tool_call>\n<function=read>\n<parameter=path>\napp/é.py\n</parameter>\n<parameter=limit>\n20\n</parameter>\n"
                '<parameter=options>\n{"follow": true, "depth": 2}\n</parameter>\n<parameter=tags>\n["a", "b"]\n</parameter>\n'
                "</function>\n</tool_call>") in ours
        assert "<parameter=command>\nls -la\n</parameter>" in ours  # JSON-string arguments (OpenAI clients) as an object
        assert ours.count("<|im_start|>user\n<tool_response>") == 1 and ours.count("</tool_response>\n") == 3
        assert "<enum>[\"text\", \"bytes\"]</enum>" in ours and "<required>[\"path\"]</required>" in ours


def test_the_template_is_forges_own_text():
    assert QWEN3_CODER_CHAT_TEMPLATE != reference()
    assert "render_extra_keys" not in QWEN3_CODER_CHAT_TEMPLATE


def test_what_the_real_template_cannot_render_is_an_error_here_too():
    real = reference()
    msgs = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "x", "arguments": "not json"}}]}]
    for template in (real, QWEN3_CODER_CHAT_TEMPLATE):
        with pytest.raises(ChatTemplateError):
            render_chat(msgs, template=template)


def _answer(msgs, tools) -> str:
    """The assistant turn of a rendering: what a model trained on it writes."""
    text = render_chat(msgs, tools=tools, template=QWEN3_CODER_CHAT_TEMPLATE)
    return text.rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")


def test_xml_tool_calls_parse_back_typed_by_the_schema():
    answer = _answer([{"role": "assistant", "content": "Let me look.", "tool_calls": [READ, BASH, PING]}], TOOLS)
    assert answer.startswith("Let me look.\n\n<tool_call>\n<function=read>\n")
    content, calls = parse_tool_calls(answer, TOOLS)
    assert content == "Let me look."
    assert [c["function"]["name"] for c in calls] == ["read", "bash", "ping"]
    assert all(c["type"] == "function" and c["id"].startswith("call_") and isinstance(c["function"]["arguments"], str) for c in calls)
    assert json.loads(calls[0]["function"]["arguments"]) == READ["function"]["arguments"]  # int, object, array typed back
    assert json.loads(calls[1]["function"]["arguments"]) == {"command": "ls -la", "timeout": 1.5}
    assert json.loads(calls[2]["function"]["arguments"]) == {}
    # without the schemas every value stays the text the model wrote
    _, untyped = parse_tool_calls(answer)
    assert json.loads(untyped[0]["function"]["arguments"]) == {"path": "app/é.py", "limit": "20", "options": '{"follow": true, "depth": 2}',
                                                              "tags": '["a", "b"]'}


def test_xml_values_convert_as_vllms_qwen3_coder_parser_does():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"}, "b": {"type": "boolean"},
        "o": {"type": "object"}, "a": {"type": "array"}, "z": {"type": ["integer", "null"]}, "bad": {"type": "integer"},
        "u": {"type": "whatever"}, "e": {"enum": ["x", "y"]}}}}}]

    def call(params: dict) -> dict:
        body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
        content, calls = parse_tool_calls(f"<tool_call>\n<function=f>\n{body}</function>\n</tool_call>", tools)
        assert content == "" and len(calls) == 1
        return json.loads(calls[0]["function"]["arguments"])

    got = call({"s": "007", "i": "007", "n": "2.5", "b": "True", "o": '{"k": [1, null]}', "a": "['q', 1]", "z": "null",
                "bad": "many", "u": "12", "e": "x", "extra": "5", "multi": "line 1\n\nline 3\n"})
    assert got == {"s": "007", "i": 7, "n": 2.5, "b": True, "o": {"k": [1, None]}, "a": ["q", 1], "z": None,
                   "bad": "many", "u": "12", "e": "x", "extra": "5", "multi": "line 1\n\nline 3\n"}
    assert call({"n": "3", "b": "false", "s": "null", "o": "[1]"}) == {"n": 3, "b": False, "s": "null", "o": "[1]"}


def test_several_calls_text_before_and_malformed_blocks():
    two = ("I will read both.\n<tool_call>\n<function=read>\n<parameter=path>\na.py\n</parameter>\n</function>\n</tool_call>\n"
           "<tool_call>\n<function=read>\n<parameter=path>\nb.py\n</parameter>\n<parameter=limit>\n5\n</parameter>\n</function>\n</tool_call>")
    content, calls = parse_tool_calls(two, TOOLS)
    assert content == "I will read both."
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"path": "a.py"}, {"path": "b.py", "limit": 5}]
    assert calls[0]["id"] != calls[1]["id"]
    # the generation stopped before </tool_call>: the block is whole, so it still parses
    assert json.loads(parse_tool_calls("<tool_call>\n<function=ping>\n</function>", TOOLS)[1][0]["function"]["arguments"]) == {}
    # JSON (Qwen2.5) and XML (Qwen3-Coder) blocks in one answer
    mixed = '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>\n' + two.split("\n", 1)[1]
    assert [c["function"]["name"] for c in parse_tool_calls(mixed, TOOLS)[1]] == ["ping", "read", "read"]
    for bad in ("<tool_call>\n<function=read>\n<parameter=path>\na.py\n</tool_call>",  # parameter never closed
                "<tool_call>\n<function=read>\n<parameter=path>\na.py\n</parameter>\n</tool_call>",  # no </function>
                "<tool_call>\n<function=>\n</function>\n</tool_call>",  # no name
                "<tool_call>\n<function=read>\nsome text\n</function>\n</tool_call>",  # text where parameters go
                "<tool_call>\n<function=read>\n</function>\ntrailing\n</tool_call>"):
        assert parse_tool_calls("Before. " + bad, TOOLS) == ("Before. " + bad, [])
    # a malformed block is left in the text while a good one beside it is taken
    content, calls = parse_tool_calls("<tool_call>\n<function=read>\n<parameter=path>\nx\n</tool_call>\n" + two, TOOLS)
    assert len(calls) == 2 and content.startswith("<tool_call>\n<function=read>\n<parameter=path>\nx\n</tool_call>")
    assert parse_tool_calls("no calls here", TOOLS) == ("no calls here", [])


@pytest.mark.parametrize("name", [n for n, (m, t) in CONVERSATIONS.items() if t or any(x.get("tool_calls") for x in m)])
def test_dataset_chats_retemplate_to_qwen3_coder(name, tmp_path: Path):
    """Datasets are rendered in Forge's ChatML (JSON tool calls); a Qwen3-Coder base trains on the same conversations
    as Qwen3-Coder's template renders them, XML tool calls included."""
    from forge_assets.chat import retemplate
    from forge_assets.training.data import read_records

    real = reference()
    msgs, tools = CONVERSATIONS[name]
    chatml = render_chat(msgs, tools=tools) + EOT
    assert '{"name": ' in chatml or not any(m.get("tool_calls") for m in msgs)
    want = render_chat(msgs, tools=tools, template=real) + EOT
    assert retemplate(chatml, QWEN3_CODER_CHAT_TEMPLATE) == want == retemplate(chatml, real)
    if any(m.get("tool_calls") for m in msgs):
        assert "<tool_call>\n<function=" in want and '{"name": ' not in want
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": chatml, "kind": "instruction"}) + "\n"
                                          + json.dumps({"text": "x = 1\n" + EOT, "kind": "code"}) + "\n")
    assert [r["text"] for r in read_records(tmp_path, "train", QWEN3_CODER_CHAT_TEMPLATE)] == [want, "x = 1\n" + EOT]


@pytest.fixture(scope="module")
def coder_gguf(tmp_path_factory) -> tuple[Path, Path]:
    """A small random Qwen3 model whose tokenizer carries QWEN3_CODER_CHAT_TEMPLATE, and its GGUF."""
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf
    from forge_assets.export.random_models import build_random_model

    folder = tmp_path_factory.mktemp("qwen3-coder")
    model_dir = build_random_model("qwen3", folder / "hf", chat_template=QWEN3_CODER_CHAT_TEMPLATE, hidden_size=64,
                                   intermediate_size=128, num_heads=4, num_kv_heads=2)
    convert_hf_to_gguf(model_dir, folder / "model.gguf")
    return model_dir, folder / "model.gguf"


def test_the_gguf_carries_the_template(coder_gguf):
    import gguf
    from transformers import AutoTokenizer

    model_dir, path = coder_gguf
    assert template_of(model_dir) == QWEN3_CODER_CHAT_TEMPLATE
    field = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == QWEN3_CODER_CHAT_TEMPLATE
    msgs, tools = CONVERSATIONS["text before a call, one result, late system"]  # object arguments: what apply_chat_template takes
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True) == \
        render_chat(msgs, True, tools=tools, template=reference())


def test_the_server_renders_with_it_and_returns_xml_tool_calls(coder_gguf):
    """Forge's server on the GGUF with the template deploy gives it (the tokenizer files' one): the prompt of a request
    with tools is Qwen3-Coder's rendering and the engine takes it; an answer holding an XML tool call (a fixed one: a
    random model cannot be made to write it) comes back as OpenAI tool_calls, typed, streamed or not."""
    from fastapi.testclient import TestClient

    from forge_assets.deploy.forge_server import ModelServer, create_app

    model_dir, path = coder_gguf
    ms = ModelServer({"n_ctx": 2048, "threads": 1, "models": [{"id": "coder:v1", "language": "python", "gguf": str(path),
                                                               "chat_template": template_of(model_dir)}]})
    client = TestClient(create_app(ms), base_url="http://localhost")
    msgs, tools = CONVERSATIONS["text before a call, one result, late system"]
    prompt = client.post("/apply-template", json={"model": "coder:v1", "messages": msgs, "tools": tools}).json()["prompt"]
    assert prompt == render_chat(msgs, True, tools=tools, template=reference())
    out = client.post("/v1/chat/completions", json={"model": "coder:v1", "messages": msgs, "tools": tools, "max_tokens": 2}).json()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert out["usage"]["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])

    answer = ("Reading it.\n<tool_call>\n<function=read>\n<parameter=path>\napp.py\n</parameter>\n<parameter=limit>\n20\n"
              "</parameter>\n<parameter=options>\n{\"follow\": false}\n</parameter>\n</function>\n</tool_call>")

    ms.generate = scripted_generate(answer, 4)
    body = {"model": "coder:v1", "messages": [{"role": "user", "content": "read app.py"}], "tools": tools}
    out, content, calls, streamed_finish = chat_both_ways(client, body)
    msg = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and msg["content"] == "Reading it."
    assert msg["tool_calls"][0]["function"] == {"name": "read", "arguments": '{"path": "app.py", "limit": 20, "options": {"follow": false}}'}
    assert "<tool_call>" not in content and "<function" not in content and content.strip() == "Reading it."
    assert calls == [{"index": 0, **msg["tool_calls"][0], "id": calls[0]["id"]}]
    assert streamed_finish == "tool_calls"
    # tool_choice "none": no tools in the prompt, and the text comes back as it is
    plain = client.post("/v1/chat/completions", json={**body, "tool_choice": "none"}).json()["choices"][0]["message"]
    assert plain["content"] == answer and "tool_calls" not in plain
