"""forge-tiny's chat template renders byte for byte as Qwen2.5-Instruct's real template; tool calls parse back."""

import json
import os
from pathlib import Path

import pytest

from forge_assets.chat import CHAT_TEMPLATE, ChatTemplateError, parse_tool_calls, render_chat, template_of

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "chat-templates"

TOOLS = [
    {"type": "function", "function": {"name": "read", "description": "Read a file",
                                      "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
    {"type": "function", "function": {"name": "bash", "description": "Run a command ünïcode",
                                      "parameters": {"type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}}}}},
]
CALL_DICT = {"id": "c1", "type": "function", "function": {"name": "read", "arguments": {"path": "app/é.py", "n": 2}}}
CALL_STR = {"id": "c2", "type": "function", "function": {"name": "bash", "arguments": "{\"command\": \"ls -la\"}"}}
CONVERSATIONS = {
    "user only": [{"role": "user", "content": "hi"}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "tool round": [{"role": "user", "content": "read it"}, {"role": "assistant", "content": "", "tool_calls": [CALL_DICT, CALL_STR]},
                   {"role": "tool", "tool_call_id": "c1", "content": "x = 1"}, {"role": "tool", "tool_call_id": "c2", "content": "a.py"},
                   {"role": "assistant", "content": "Done."}, {"role": "user", "content": "more"}],
    "text and call, one tool result, late system": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL_DICT]}, {"role": "tool", "content": "r"},
        {"role": "system", "content": "mid"}, {"role": "user", "content": "multi\nline\n\n```py\nx\n```"}],
    "empty content": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
}


def reference(name: str) -> str:
    path = REFERENCE / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: shared/ must sit beside the checkout")
        pytest.skip(f"{path} not present")
    return path.read_text()


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no tools", "tools"])
@pytest.mark.parametrize("generation", [False, True], ids=["closed", "generation prompt"])
def test_forge_template_renders_byte_identical_to_qwen25(name, tools, generation):
    qwen = reference("Qwen-Qwen2.5-7B-Instruct.jinja")
    msgs = CONVERSATIONS[name]
    ours = render_chat(msgs, generation, tools=tools)
    assert ours == render_chat(msgs, generation, tools=tools, template=qwen)
    assert ours.startswith("<|im_start|>system\n")
    if tools:
        assert "\n" + json.dumps(TOOLS[1], ensure_ascii=False) + "\n</tools>" in ours  # one schema per line, unicode kept
    if name == "tool round":
        # string arguments (as OpenAI clients send them) are written as a JSON object, not a quoted string
        assert '{"name": "bash", "arguments": {"command": "ls -la"}}' in ours
        assert ours.count("<|im_start|>user\n<tool_response>") == 1 and ours.count("<tool_response>") == 2


def test_forge_tiny_tokenizer_carries_the_template(tiny_model: Path):
    from transformers import AutoTokenizer

    assert template_of(tiny_model) == CHAT_TEMPLATE
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    msgs = CONVERSATIONS["text and call, one tool result, late system"]  # object arguments: what apply_chat_template takes
    assert tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False, add_generation_prompt=True) == render_chat(msgs, True, tools=TOOLS)


def test_qwen3_template_renders_through_the_same_path():
    qwen3 = reference("Qwen-Qwen3-0.6B.jinja")
    text = render_chat(CONVERSATIONS["tool round"], True, tools=TOOLS, template=qwen3)
    assert "<tools>" in text and '"arguments": {"command": "ls -la"}' in text and text.endswith("<|im_start|>assistant\n")
    assert "You are Qwen, created by Alibaba Cloud" not in text  # Qwen3 has no default system turn


def test_tool_calls_parse_back_to_openai_form():
    text = render_chat([{"role": "assistant", "content": "Reading.", "tool_calls": [CALL_DICT, CALL_STR]}])
    answer = text.split("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    content, calls = parse_tool_calls(answer)
    assert content == "Reading."
    assert [c["function"]["name"] for c in calls] == ["read", "bash"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"path": "app/é.py", "n": 2}
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    # malformed JSON is left as text; an unclosed last block (generation cut at the stop) still parses
    assert parse_tool_calls("<tool_call>\n{not json}\n</tool_call>") == ("<tool_call>\n{not json}\n</tool_call>", [])
    assert parse_tool_calls('<tool_call>\n{"name": "read", "arguments": {"path": "a"}}')[1][0]["function"]["name"] == "read"


def test_bad_message_is_a_clear_error():
    with pytest.raises(ChatTemplateError, match="message 1 has no `role`"):
        render_chat([{"role": "user", "content": "x"}, {"content": "no role"}])


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no tools", "tools"])
def test_dataset_chats_render_again_with_a_bases_own_template(name, tools):
    """Datasets are rendered with Forge's template; a Qwen3 base trains on the same conversations as Qwen3 renders them."""
    from forge_assets.chat import EOT, parse_rendered, retemplate

    msgs = CONVERSATIONS[name]
    text = render_chat(msgs, tools=tools)
    back, back_tools = parse_rendered(text)
    assert render_chat(back, tools=back_tools) == text and back_tools == tools
    qwen3 = reference("Qwen-Qwen3-0.6B.jinja")
    assert retemplate(text + EOT, qwen3) == render_chat(msgs, tools=tools, template=qwen3) + EOT
    assert retemplate("def f():\n    pass\n" + EOT, qwen3) == "def f():\n    pass\n" + EOT  # code is not a chat
    assert retemplate(text + EOT, CHAT_TEMPLATE) == text + EOT


def test_read_records_renders_chats_with_the_given_template(tmp_path: Path):
    from forge_assets.chat import EOT
    from forge_assets.training.data import read_records

    chat = render_chat(CONVERSATIONS["system"]) + EOT
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": chat, "kind": "instruction"}) + "\n"
                                          + json.dumps({"text": "x = 1\n" + EOT, "kind": "code"}) + "\n")
    qwen3 = reference("Qwen-Qwen3-0.6B.jinja")
    got = [r["text"] for r in read_records(tmp_path, "train", qwen3)]
    assert got == [render_chat(CONVERSATIONS["system"], template=qwen3) + EOT, "x = 1\n" + EOT]
    assert [r["text"] for r in read_records(tmp_path, "train")] == [chat, "x = 1\n" + EOT]
