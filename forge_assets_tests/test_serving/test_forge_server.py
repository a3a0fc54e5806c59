"""Forge's model server, for real: one base GGUF held once, a LoRA GGUF per language applied per request, OpenAI
chat (streamed or not, tools rendered with the training template, tool calls returned as `tool_calls`), FIM
completions, llama.cpp's native /completion, and a context that takes a 4,000-token request."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from forge_assets.chat import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, render_chat
from forge_assets.deploy import llama_server, procs
from forge_assets_tests.conftest import free_port, forge_processes
from forge_assets_tests.test_serving.scripted import chat_both_ways, scripted_generate


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _stream(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(), headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=120) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory) -> dict:
    """Two languages' adapters as LoRA GGUFs, and forge-tiny's Q8_0 base GGUF."""
    from forge_assets.export.gguf_export import convert_to_gguf, quantize
    from forge_assets.export.lora_gguf import convert_lora_to_gguf
    from forge_assets_tests.test_export.test_lora_gguf import make_peft_adapter

    folder = tmp_path_factory.mktemp("served")
    convert_to_gguf(tiny_model, folder / "f32.gguf", "F32")
    quantize(folder / "f32.gguf", folder / "base-Q8_0.gguf", "Q8_0")
    out = {"base": folder / "base-Q8_0.gguf"}
    for seed, lang in enumerate(("python", "rust"), start=1):
        peft = make_peft_adapter(tiny_model, folder / f"peft-{lang}", seed=seed)
        convert_lora_to_gguf(peft, tiny_model, folder / f"{lang}.gguf", "F16")
        out[lang] = folder / f"{lang}.gguf"
    return out


@pytest.fixture(scope="module")
def server(adapters: dict, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    models = [{"id": f"forge-{lang}:v1", "language": lang, "gguf": str(adapters["base"]), "lora": str(adapters[lang]), "chat_template": None}
              for lang in ("python", "rust")]
    rec = llama_server.start(None, "forge-python:v1", "127.0.0.1", free_port(), folder / "server.log", n_ctx=32768, models=models)
    yield rec
    procs.terminate(rec["process"])


def _greedy(gguf: Path, lora: Path | None, prompt: str, n: int = 12) -> str:
    from forge_assets.export.gguf_export import load_llama

    llm = load_llama(gguf, n_ctx=1024, lora=lora)
    return llm.create_completion(prompt, max_tokens=n, temperature=0.0)["choices"][0]["text"]


def test_one_process_serves_every_language_with_its_own_adapter(server: dict, adapters: dict):
    ep = server["endpoint"]
    listed = {m["id"]: m["meta"] for m in json.loads(urllib.request.urlopen(f"{ep}/models").read())["data"]}
    assert set(listed) == {"forge-python:v1", "forge-rust:v1"} and listed["forge-rust:v1"]["context"] == 32768
    assert listed["forge-python:v1"]["base"] == listed["forge-rust:v1"]["base"]  # one base for both
    prompt = "def handle_get(request, store):\n    key = "
    got = {}
    for lang in ("python", "rust", "python"):  # switching back and forth: each request gets its own adapter
        out = _post(f"{ep}/completions", {"model": f"forge-{lang}:v1", "prompt": prompt, "max_tokens": 12})
        got.setdefault(lang, set()).add(out["choices"][0]["text"])
    assert got["python"] == {_greedy(adapters["base"], adapters["python"], prompt)}
    assert got["rust"] == {_greedy(adapters["base"], adapters["rust"], prompt)}
    assert got["python"] != got["rust"] or _greedy(adapters["base"], None, prompt) not in got["python"]
    # the stable alias names the language's current tag
    assert _post(f"{ep}/completions", {"model": "forge-rust:latest", "prompt": prompt, "max_tokens": 12})["model"] == "forge-rust:v1"
    # one process holds both: the model server plus nothing else Forge started for this test
    assert [p.pid for p in forge_processes()] == [server["pid"]]


@pytest.mark.slow
def test_a_4000_token_request_fits_the_default_context(server: dict):
    long = "\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(500))
    out = _post(f"{server['endpoint']}/chat/completions", {"model": "forge-python:v1", "max_tokens": 4,
                                                           "messages": [{"role": "system", "content": long}, {"role": "user", "content": "hi"}]})
    assert out["usage"]["prompt_tokens"] > 4000 and out["choices"][0]["message"]["role"] == "assistant"


def test_chat_renders_tools_with_the_training_template_and_streams(server: dict, adapters: dict):
    ep = server["endpoint"]
    tools = [{"type": "function", "function": {"name": "read", "description": "Read a file", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "read app.py"}]
    out = _post(f"{ep}/chat/completions", {"model": "forge-python:v1", "messages": msgs, "tools": tools, "max_tokens": 6})
    # the prompt the server built is exactly the training template's text (same token count as rendering it here)
    from forge_assets.export.gguf_export import load_llama

    text = render_chat(msgs, add_generation_prompt=True, tools=tools)
    meta = json.loads(urllib.request.urlopen(f"{ep}/models").read())["data"][0]["meta"]
    assert meta["base"] == adapters["base"].name  # a file name: no absolute path leaves the server
    llm = load_llama(adapters["base"])
    assert out["usage"]["prompt_tokens"] == len(llm.tokenize(text.encode(), add_bos=False, special=True))
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    events = _stream(f"{ep}/chat/completions", {"model": "forge-python:v1", "messages": msgs, "max_tokens": 6,
                                                "stream_options": {"include_usage": True}})
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length") and events[-1]["usage"]["completion_tokens"] > 0
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    plain = _post(f"{ep}/chat/completions", {"model": "forge-python:v1", "messages": msgs, "max_tokens": 6})
    assert streamed == plain["choices"][0]["message"]["content"]


def test_fim_and_native_completion(server: dict, adapters: dict):
    ep = server["endpoint"]
    root = ep.removesuffix("/v1")
    pre, suf = "def add(a, b):\n    ", "\n    return c\n"
    fim = _post(f"{ep}/completions", {"model": "forge-rust:v1", "prompt": pre, "suffix": suf, "max_tokens": 10})
    assert fim["choices"][0]["text"] == _greedy(adapters["base"], adapters["rust"], f"{FIM_PREFIX}{pre}{FIM_SUFFIX}{suf}{FIM_MIDDLE}", 10)
    native = _post(f"{root}/lang/rust/completion", {"prompt": f"{FIM_PREFIX}{pre}{FIM_SUFFIX}{suf}{FIM_MIDDLE}", "n_predict": 10})
    assert native["content"] == fim["choices"][0]["text"] and native["stop"] is True


def test_errors_are_openai_shaped_and_name_the_fix(server: dict):
    ep = server["endpoint"]
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(f"{ep}/chat/completions", {"model": "forge-go:v1", "messages": [{"role": "user", "content": "x"}]})
    body = json.loads(err.value.read())
    assert err.value.code == 404 and body["error"]["code"] == "model_not_found" and "forge-python:v1" in body["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(f"{ep}/chat/completions", {"model": "forge-python:v1", "max_tokens": 40000, "messages": [{"role": "user", "content": "x"}]})
    assert err.value.code == 400 and "deploy.context" in json.loads(err.value.read())["error"]["message"]
    # and the server still answers afterwards
    assert _post(f"{ep}/completions", {"model": "forge-python:v1", "prompt": "x", "max_tokens": 2})["choices"]


def test_tool_calls_come_back_as_openai_tool_calls(adapters: dict):
    """The protocol layer on a real loaded model whose generation is replaced by a fixed answer (forge-tiny cannot be
    made to write a tool call): non-streamed and streamed responses carry `tool_calls`, the text before them as content."""
    from fastapi.testclient import TestClient

    from forge_assets.deploy.forge_server import ModelServer, create_app

    ms = ModelServer({"n_ctx": 2048, "threads": 1, "models": [{"id": "forge-python:v1", "language": "python", "gguf": str(adapters["base"]),
                                                               "lora": str(adapters["python"])}]})
    answer = 'Let me read it.\n<tool_call>\n{"name": "read", "arguments": {"path": "app.py"}}\n</tool_call>'

    ms.generate = scripted_generate(answer, 5)
    client = TestClient(create_app(ms), base_url="http://localhost")
    body = {"model": "forge-python:v1", "messages": [{"role": "user", "content": "read app.py"}],
            "tools": [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}]}
    out, content, calls, streamed_finish = chat_both_ways(client, body)
    msg = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and msg["content"] == "Let me read it."
    assert msg["tool_calls"][0]["function"] == {"name": "read", "arguments": '{"path": "app.py"}'}
    assert "<tool_call>" not in content and content.strip() == "Let me read it."
    assert calls == [{"index": 0, **msg["tool_calls"][0], "id": calls[0]["id"]}]
    assert streamed_finish == "tool_calls"


def test_training_the_gguf_and_the_server_render_the_same_text(server: dict, adapters: dict, tiny_model: Path):
    """One conversation with tools and a tool round: the dataset's rendering (training), the chat template stored in
    the GGUF, and the prompt the server builds for the request are the same text."""
    import gguf

    from forge_assets.chat import template_of

    tools = [{"type": "function", "function": {"name": "read", "description": "Read a file", "parameters": {"type": "object",
              "properties": {"path": {"type": "string"}}}}}]
    msgs = [{"role": "system", "content": "You are Forge."}, {"role": "user", "content": "open app.py"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                                                                 "function": {"name": "read", "arguments": "{\"path\": \"app.py\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "print('hi')"}]
    training = render_chat(msgs, add_generation_prompt=True, tools=tools, template=template_of(tiny_model))
    field = gguf.GGUFReader(str(adapters["base"])).fields["tokenizer.chat_template"]
    in_gguf = render_chat(msgs, add_generation_prompt=True, tools=tools, template=bytes(field.parts[field.data[0]]).decode())
    served = _post(f"{server['endpoint'].removesuffix('/v1')}/apply-template", {"model": "forge-python:v1", "messages": msgs, "tools": tools})
    assert training == in_gguf == served["prompt"]
    assert '<tool_call>\n{"name": "read", "arguments": {"path": "app.py"}}\n</tool_call>' in training


def test_gpu_offload_is_all_layers_where_the_engine_has_a_gpu():
    import xllamacpp

    from forge_assets.deploy.forge_server import gpu_layers

    assert gpu_layers("auto") == -1  # every layer: the engine offloads to whatever GPU device it has (none on this CPU wheel)
    assert xllamacpp.get_device_info()  # the engine lists its devices (the CPU here)
    assert gpu_layers(12) == 12 and gpu_layers("0") == 0
