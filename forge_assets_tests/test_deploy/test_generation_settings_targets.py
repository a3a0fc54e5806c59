"""The same generation settings (forge.yaml's deploy.system / deploy.parameters, deploy.languages.<lang> over them, resolved
once by deploy/settings.py) reach every place that serves or calls the model: the Ollama tag (SYSTEM, PARAMETERs, the
TEMPLATE's default system turn), mlx_lm.server's launch flags and chat template, the vLLM plan's
--override-generation-config and chat template, and the OpenCode / Continue / Tabby configurations.

Ollama is the test double (ollama_double.py) with the TEMPLATE executed by Go as Ollama does (test_ollama_template.py's
renderer); mlx-lm runs for real; the vLLM plan is checked as data (vLLM does not run here); Continue's configuration is
validated by Continue's own package, OpenCode's against its config type and by the real OpenCode client's requests.
"""

from __future__ import annotations

import json
import shutil
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from forge_assets.chat import render_chat, template_of
from forge_assets.config import DeployConfig
from forge_assets.deploy import clients, mlx_target, ollama_target, vllm_target
from forge_assets.deploy.clients import Endpoint, ServedModel
from forge_assets.deploy.engine_settings import with_default_system
from forge_assets.deploy.ollama_target import QWEN25_CHAT_TEMPLATE, QWEN25_DEFAULT_SYSTEM
from forge_assets.deploy.settings import default_system, generation
from forge_assets_tests.test_deploy.ollama_double import OllamaTestDouble
from forge_assets_tests.test_deploy.test_clients import (OPENCODE_CONFIG, check_shape, config_yaml_prefix,  # noqa: F401
                                                         continue_validate, opencode_binary)
from forge_assets_tests.test_deploy.test_ollama_template import go_values_renderer, jinja, renderer  # noqa: F401
from forge_assets_tests.test_deploy.test_vllm_target import make_adapter, make_base

QWEN_IDENTITY = "You are Qwen, created by Alibaba Cloud"
STOPS = ["<|im_end|>", "<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|file_sep|>",
         "<|repo_name|>"]
# SmolLM2-Instruct's template (a ChatML template of another family, with its own default system prompt)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# A Llama-3-style template: no default system prompt at all
LLAMA_TEMPLATE = (
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content']"
    " + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}")
OTHER_DEFAULT = "You are Forge, a coding assistant."
TRICKY = 'Be "terse" \\ use {{ braces }} and {% tags %}\nsecond line: é中😀\ttab'

DEPLOY = DeployConfig(system="You write idiomatic Python.",
                      parameters={"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
                                  "max_tokens": 512, "stop": ["\n\n\n"]},
                      languages={"python": {"parameters": {"temperature": 0.0, "max_tokens": 256}},
                                 "rust": {"system": "You write idiomatic Rust."}})


def _qwen_reference() -> str:
    here = Path(__file__).resolve()
    ref = next((p / "shared/reference/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja" for p in here.parents
                if (p / "shared/reference/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja").is_file()), None)
    return ref.read_text(encoding="utf-8") if ref is not None else QWEN25_CHAT_TEMPLATE


def _other_family_model(tiny_model: Path, folder: Path) -> Path:
    """forge-tiny relabelled as a Llama-architecture model whose ChatML template's default system prompt is not Qwen's."""
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    (folder / "chat_template.jinja").write_text(QWEN25_CHAT_TEMPLATE.replace(QWEN25_DEFAULT_SYSTEM, OTHER_DEFAULT))
    return folder


# ------------------------------------------------------------------------------------------------ resolution


def test_the_default_system_prompt_is_the_base_templates_own():
    assert default_system(_qwen_reference()) == QWEN25_DEFAULT_SYSTEM
    smol = default_system(SMOLLM2_TEMPLATE)
    assert smol == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert default_system(LLAMA_TEMPLATE) is None
    for template in (SMOLLM2_TEMPLATE, LLAMA_TEMPLATE):
        gen = generation(DeployConfig(), "python", template)
        assert gen.system_source == "base template" and QWEN_IDENTITY not in (gen.system or "")
        assert gen.parameters == {"temperature": 0.2}


def test_the_language_override_wins_key_by_key():
    py = generation(DEPLOY, "python", QWEN25_CHAT_TEMPLATE)
    assert py.system == "You write idiomatic Python." and py.system_source == "config"
    assert py.parameters == {"temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
                             "max_tokens": 256, "stop": ["\n\n\n"]}
    rs = generation(DEPLOY, "rust", QWEN25_CHAT_TEMPLATE)
    assert rs.system == "You write idiomatic Rust." and rs.system_source == "language" and rs.parameters["temperature"] == 0.2


@pytest.mark.parametrize("template", [QWEN25_CHAT_TEMPLATE, SMOLLM2_TEMPLATE, LLAMA_TEMPLATE])
def test_a_template_with_a_default_system_renders_as_if_the_client_had_sent_it(template: str):
    wrapped = with_default_system(template, TRICKY)
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    assert render_chat(convo, True, template=wrapped) == render_chat([{"role": "system", "content": TRICKY}, *convo], True,
                                                                      template=template)
    own = [{"role": "system", "content": "Mine."}, *convo]  # a request's own system message wins
    assert render_chat(own, True, template=wrapped) == render_chat(own, True, template=template)
    assert default_system(wrapped) == TRICKY.strip()


# ------------------------------------------------------------------------------------------------ Ollama


def test_ollama_parameters_and_modelfile_lines():
    gen = generation(DEPLOY, "python", QWEN25_CHAT_TEMPLATE)
    params = ollama_target.parameters_for(gen.parameters, STOPS[:2], 32768)
    assert params == {"stop": ["<|im_end|>", "<|endoftext|>", "\n\n\n"], "temperature": 0.0, "top_p": 0.9, "top_k": 40,
                      "min_p": 0.05, "repeat_penalty": 1.1, "num_predict": 256, "num_ctx": 32768}
    assert ollama_target.parameters_for({"num_ctx": 4096}, STOPS[:1], 32768)["num_ctx"] == 4096
    text = ollama_target.modelfile("/m/model.gguf", "{{ .Prompt }}", gen.system, params)
    assert text.splitlines() == [
        "FROM /m/model.gguf", 'TEMPLATE """{{ .Prompt }}"""', 'SYSTEM """You write idiomatic Python."""',
        'PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"', 'PARAMETER stop "\\n\\n\\n"',
        "PARAMETER temperature 0.0", "PARAMETER top_p 0.9", "PARAMETER top_k 40", "PARAMETER min_p 0.05",
        "PARAMETER repeat_penalty 1.1", "PARAMETER num_predict 256", "PARAMETER num_ctx 32768"]
    assert "SYSTEM" not in ollama_target.modelfile("/m.gguf", "t", None, {"temperature": 0.2})


def test_the_ollama_template_default_system_is_the_tags_and_renders_with_go(renderer: Path):  # noqa: F811
    from forge_assets_tests.test_deploy.test_ollama_template import go_render

    template = ollama_target.qwen25_template(fim=True, default_system=TRICKY)
    out = go_render(renderer, template, [{"messages": [{"role": "user", "content": "hi"}]},
                                         {"messages": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]}])
    assert out["renders"][0]["out"] == jinja([{"role": "system", "content": TRICKY}, {"role": "user", "content": "hi"}])
    assert out["renders"][1]["out"] == jinja([{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}])
    assert QWEN_IDENTITY not in template
    assert ollama_target.qwen25_template() == ollama_target.qwen25_template(default_system=QWEN25_DEFAULT_SYSTEM)


def test_an_ollama_tag_gets_its_system_prompt_and_parameters(q8_gguf: Path, tiny_model: Path, tmp_path: Path,
                                                              renderer: Path):  # noqa: F811
    gen = generation(DEPLOY, "python", template_of(tiny_model))
    with OllamaTestDouble(tmp_path, render=go_values_renderer(renderer)) as ollama:
        out = ollama_target.deploy(q8_gguf, "forge-python:g", tiny_model, ollama.host, latest_tag="forge-python:latest",
                                   num_ctx=8192, generation=gen)
        model = ollama.models["forge-python:g"]
        create = next(b for path, b in ollama.bodies if path == "/api/create")
    assert create["system"] == "You write idiomatic Python." == model["system"]
    assert model["parameters"] == {"stop": [*STOPS, "\n\n\n"], "temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
                                   "repeat_penalty": 1.1, "num_predict": 256, "num_ctx": 8192}
    assert model["template"] == ollama_target.qwen25_template(fim=True, default_system="You write idiomatic Python.")
    lines = out["modelfile"].splitlines()
    assert 'SYSTEM """You write idiomatic Python."""' in lines and "PARAMETER temperature 0.0" in lines
    assert "PARAMETER num_predict 256" in lines and 'PARAMETER stop "\\n\\n\\n"' in lines and "PARAMETER num_ctx 8192" in lines
    assert QWEN_IDENTITY not in out["modelfile"]
    # the smoke chat sent no system message: Go rendered the tag's system prompt where Qwen's line used to be
    assert ollama.prompts[0].startswith("<|im_start|>system\nYou write idiomatic Python.\n\n# Tools")
    assert out["generation"] == gen.as_dict() and out["num_ctx"] == 8192


def test_a_non_qwen_base_never_gets_qwens_identity_line(q8_gguf: Path, tiny_model: Path, tmp_path: Path,
                                                        renderer: Path):  # noqa: F811
    model_dir = _other_family_model(tiny_model, tmp_path / "llama")
    template, _ = ollama_target.template_for(model_dir)
    assert QWEN_IDENTITY not in template and ollama_target.go_string(OTHER_DEFAULT) in template
    with OllamaTestDouble(tmp_path, render=go_values_renderer(renderer)) as ollama:
        out = ollama_target.deploy(q8_gguf, "forge-python:o", model_dir, ollama.host)  # forge.yaml's defaults
        model = ollama.models["forge-python:o"]
    assert model["system"] == OTHER_DEFAULT and model["parameters"]["temperature"] == 0.2
    assert QWEN_IDENTITY not in out["modelfile"] and QWEN_IDENTITY not in model["template"]
    assert all(QWEN_IDENTITY not in p for p in ollama.prompts) and OTHER_DEFAULT in ollama.prompts[0]
    assert f'SYSTEM """{OTHER_DEFAULT}"""' in out["modelfile"].splitlines()


# ------------------------------------------------------------------------------------------------ mlx-lm


def test_mlx_launch_flags():
    gen = generation(DEPLOY, "python", QWEN25_CHAT_TEMPLATE)
    args, only = mlx_target.generation_args(gen, QWEN25_CHAT_TEMPLATE)
    assert args[:10] == ["--temp", "0.0", "--top-p", "0.9", "--top-k", "40", "--min-p", "0.05", "--max-tokens", "256"]
    assert args[10] == "--chat-template" and args[11] == with_default_system(QWEN25_CHAT_TEMPLATE, "You write idiomatic Python.")
    assert only == {"repetition_penalty": 1.1, "stop": ["\n\n\n"]}
    # no configured system prompt: the base's own template (and its default) is served unchanged
    args, only = mlx_target.generation_args(generation(DeployConfig(), "python", QWEN25_CHAT_TEMPLATE), QWEN25_CHAT_TEMPLATE)
    assert args == ["--temp", "0.2"] and only == {}
    assert mlx_target.generation_args(None, QWEN25_CHAT_TEMPLATE) == ([], {})


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_mlx_server_serves_the_tags_system_prompt_and_defaults(tiny_model: Path, tmp_path: Path):
    from forge_assets.files import free_port
    from forge_assets_tests.test_deploy.test_mlx_target import make_peft

    adapter = make_peft(tiny_model, tmp_path / "peft", seed=0)
    deploy = DeployConfig(system=TRICKY, parameters={"temperature": 0, "max_tokens": 3})
    gen = generation(deploy, "python", template_of(tiny_model))
    record = mlx_target.start(tiny_model, {"python": adapter}, "127.0.0.1", free_port("127.0.0.1"), tmp_path / "s" / "server.log",
                              timeout=90, generation=gen)
    try:
        assert record["generation"] == gen.as_dict() and record["generation_args"][:4] == ["--temp", "0.0", "--max-tokens", "3"]
        url = f"{record['endpoint']}/chat/completions"
        user = {"role": "user", "content": "Write a function."}
        bare = _post(url, {"messages": [user]})  # no system message, no max_tokens, no temperature: the tag's defaults
        sent = _post(url, {"messages": [{"role": "system", "content": TRICKY}, user], "max_tokens": 3, "temperature": 0})
        qwen = _post(url, {"messages": [{"role": "system", "content": QWEN25_DEFAULT_SYSTEM}, user], "max_tokens": 3,
                           "temperature": 0})
        assert bare["usage"]["prompt_tokens"] == sent["usage"]["prompt_tokens"] != qwen["usage"]["prompt_tokens"]
        assert bare["choices"][0]["message"]["content"] == sent["choices"][0]["message"]["content"]
        assert bare["usage"]["completion_tokens"] <= 3  # --max-tokens 3
    finally:
        mlx_target.stop(record)


# ------------------------------------------------------------------------------------------------ vLLM


def test_vllm_plan_overrides_generation_config_and_keeps_per_language_values_for_requests(tmp_path: Path):
    base = make_base(tmp_path / "base")
    (base / "chat_template.jinja").write_text(QWEN25_CHAT_TEMPLATE)
    adapters = {"forge-python:a": make_adapter(tmp_path / "py", base), "forge-rust:b": make_adapter(tmp_path / "rs", base)}
    tpl = template_of(base)
    same = DeployConfig(system="Be brief.", parameters={"temperature": 0.1, "top_p": 0.9, "repeat_penalty": 1.05, "max_tokens": 300,
                                                        "stop": ["###"]})
    gens = {"forge-python:a": generation(same, "python", tpl), "forge-rust:b": generation(same, "rust", tpl)}
    plan = vllm_target.plan(str(base), adapters, "127.0.0.1", 8000, generation=gens)
    cmd = plan["command"]
    assert json.loads(cmd[cmd.index("--override-generation-config") + 1]) == {
        "temperature": 0.1, "top_p": 0.9, "repetition_penalty": 1.05, "max_new_tokens": 300}
    assert cmd[cmd.index("--chat-template") + 1] == with_default_system(QWEN25_CHAT_TEMPLATE, "Be brief.")
    assert plan["manifest"]["requests"]["forge-python:a"] == {"model": "forge-python:a", "stop": ["###"]}  # stop: per request
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "8000"]

    # per-language values differ: the server holds what they share, each tag's requests carry the rest
    gens = {"forge-python:a": generation(DEPLOY, "python", tpl), "forge-rust:b": generation(DEPLOY, "rust", tpl)}
    plan = vllm_target.plan(str(base), adapters, "127.0.0.1", 8000, generation=gens)
    cmd, m = plan["command"], plan["manifest"]
    assert json.loads(cmd[cmd.index("--override-generation-config") + 1]) == {
        "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}
    assert "--chat-template" not in cmd  # the system prompts differ: each tag's requests carry its own
    assert m["requests"]["forge-python:a"] == {"model": "forge-python:a", "temperature": 0.0, "max_tokens": 256, "stop": ["\n\n\n"],
                                               "system": "You write idiomatic Python."}
    assert m["requests"]["forge-rust:b"] == {"model": "forge-rust:b", "temperature": 0.2, "max_tokens": 512, "stop": ["\n\n\n"],
                                             "system": "You write idiomatic Rust."}
    assert "per server" in m["generation"]["note"] and m["generation"]["settings"]["forge-rust:b"] == gens["forge-rust:b"].as_dict()

    # no generation settings: the plan is as before
    plain = vllm_target.plan(str(base), adapters, "127.0.0.1", 8000)
    assert "--override-generation-config" not in plain["command"] and "generation" not in plain["manifest"]


# ------------------------------------------------------------------------------------------------ clients


def _endpoint(target: str) -> Endpoint:
    base = {"llama-server": "http://127.0.0.1:8088/v1", "ollama": "http://127.0.0.1:11434", "mlx-lm": "http://127.0.0.1:8089/v1",
            "vllm": "http://127.0.0.1:8000/v1"}[target]
    py = ServedModel("forge-python:1a2b", "python", 32768, 4096, generation=generation(DEPLOY, "python", QWEN25_CHAT_TEMPLATE))
    rs = ServedModel("forge-rust:3c4d", "rust", 32768, 4096, generation=generation(DEPLOY, "rust", QWEN25_CHAT_TEMPLATE).as_dict())
    return Endpoint(target, base, [py, rs])


def test_continue_config_carries_each_tags_values_and_validates(config_yaml_prefix: Path, tmp_path: Path):  # noqa: F811
    cfg = clients.continue_dict(_endpoint("llama-server"))
    py, rs, auto = cfg["models"]
    assert py["defaultCompletionOptions"] == {"contextLength": 32768, "maxTokens": 256, "temperature": 0.0, "topP": 0.9,
                                              "topK": 40, "minP": 0.05, "stop": ["\n\n\n"]}
    assert py["chatOptions"] == {"baseSystemMessage": "You write idiomatic Python."}
    assert rs["defaultCompletionOptions"]["temperature"] == 0.2 and rs["defaultCompletionOptions"]["maxTokens"] == 512
    assert rs["chatOptions"] == {"baseSystemMessage": "You write idiomatic Rust."}
    assert auto["roles"] == ["autocomplete"] and auto["defaultCompletionOptions"]["temperature"] == 0.0
    assert auto["defaultCompletionOptions"]["stop"][-1] == "\n\n\n" and "chatOptions" not in auto
    text = clients.continue_config(_endpoint("llama-server"))
    assert "repeat_penalty 1.1 is applied by the server" in text
    # a system prompt that is only the base template's own default is not written
    plain = ServedModel("forge-go:1", "go", 32768, 4096, generation=generation(DeployConfig(), "go", QWEN25_CHAT_TEMPLATE))
    only = clients.continue_dict(Endpoint("vllm", "http://127.0.0.1:8000/v1", [plain]))["models"][0]
    assert "chatOptions" not in only and only["defaultCompletionOptions"]["temperature"] == 0.2
    texts = {f"{t}": clients.continue_config(_endpoint(t)) for t in clients.TARGETS}
    texts["plain"] = yaml.safe_dump({"name": "x", "version": "1.0.0", "schema": "v1", "models": [only]}, sort_keys=False)
    for name, result in continue_validate(config_yaml_prefix, texts, tmp_path).items():
        assert result["ok"], f"{name}: {result}"


def test_opencode_and_tabby_configs_carry_each_tags_values():
    for target in clients.TARGETS:
        cfg = clients.opencode_config(_endpoint(target))
        assert check_shape(cfg, OPENCODE_CONFIG) == [], target
        models = cfg["provider"]["forge"]["models"]
        py = models["forge-python:1a2b"]["options"]
        if target == "ollama":  # Ollama's OpenAI API reads neither top_k, min_p nor a repetition penalty: its tag holds them
            assert py == {"temperature": 0.0, "top_p": 0.9, "stop": ["\n\n\n"]}
        else:
            penalty = "repeat_penalty" if target == "llama-server" else "repetition_penalty"
            assert py == {"temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, penalty: 1.1, "stop": ["\n\n\n"]}
        assert models["forge-rust:3c4d"]["options"]["temperature"] == 0.2
        text = clients.tabby_config(_endpoint(target))
        tomllib.loads(text)
        assert "# generation settings of forge-python:1a2b: temperature 0.0, top_p 0.9" in text
        assert 'system prompt "You write idiomatic Python."' in text
    # a deployment recorded before generation settings: no values, as before
    bare = Endpoint("vllm", "http://127.0.0.1:8000/v1", [ServedModel("forge-go:1", "go", 32768, 4096)])
    assert "options" not in clients.opencode_config(bare)["provider"]["forge"]["models"]["forge-go:1"]
    assert "temperature" not in clients.continue_dict(bare)["models"][0]["defaultCompletionOptions"]
    assert clients.continue_dict(bare)["models"][-1]["defaultCompletionOptions"]["temperature"] == 0.2  # autocomplete: as before
    filled = clients.with_generation(bare, {"go": generation(DEPLOY, "go", None)})
    assert filled.models[0].parameters["temperature"] == 0.2


def _sse(exchange):
    from forge_assets_tests.test_deploy.request_recorder import Reply

    if not exchange.path.endswith("/chat/completions"):
        return Reply(404, {"Content-Type": "application/json"}, b"{}")
    chunks = [{"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
              {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return Reply(200, {"Content-Type": "text/event-stream"}, body)


@pytest.mark.slow
def test_opencode_sends_the_tags_values_with_every_request(opencode_binary: Path, tmp_path: Path):  # noqa: F811
    """The real OpenCode client with the opencode.json Forge writes: each chat request's body carries the tag's values."""
    from forge_assets_tests.test_deploy import opencode_client
    from forge_assets_tests.test_deploy.request_recorder import RequestRecorder

    (tmp_path / "project").mkdir()
    with RequestRecorder(None, responder=_sse) as rec:
        served = Endpoint("llama-server", f"{rec.url}/v1", _endpoint("llama-server").models)
        result = opencode_client.run(opencode_binary, tmp_path / "project", clients.opencode_config(served), "Say ok.",
                                     timeout=90)
        bodies = [e.body for e in rec.records if e.path.endswith("/chat/completions")]
    assert result.returncode == 0 and bodies
    for body in bodies:
        assert body["model"] == "forge-python:1a2b"
        assert {k: body.get(k) for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "stop")} == {
            "temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "stop": ["\n\n\n"]}


def test_forge_client_config_resolves_the_settings_for_a_record_without_them(tmp_path: Path, monkeypatch, capsys):
    """A deployment recorded without generation settings (Ollama cannot run here: its deploy is replaced by one that
    records what Forge's did before them): `forge client-config` resolves them from forge.yaml for the gguf it serves."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.cli.cmd_client_config import client_config
    from forge_assets.config import load_config
    from forge_assets.deploy import service
    from forge_assets.deploy.targets import TARGETS
    from forge_assets_tests.conftest import write_config

    cfg_path = write_config(tmp_path, [], deploy={"target": "ollama", "ollama_host": "http://127.0.0.1:1", "system": "Sys P.",
                                                  "parameters": {"temperature": 0.1},
                                                  "languages": {"python": {"parameters": {"top_p": 0.5}}}})
    monkeypatch.setenv("FORGE_CONFIG", str(cfg_path))
    cfg, store = load_config(cfg_path), ArtifactStore(tmp_path / "artifacts")
    t = TARGETS["ollama"]
    monkeypatch.setattr(t, "deploy", lambda store_, cfg_, language, gguf, tag, log: {
        "target": t.name, "tag": tag, "endpoint": "http://127.0.0.1:1", "gguf": gguf.version, "smoke": {}, "context": 8192})
    with store.write("gguf", "python", {"inputs": {}, "figures": {}}) as out:
        (out.path / "chat_template.jinja").write_text(SMOLLM2_TEMPLATE)
    service.deploy_gguf(store, cfg, "python", out.artifact, log=lambda _: None)
    capsys.readouterr()
    assert client_config("continue", None, None) == 0
    chat = yaml.safe_load(capsys.readouterr().out)["models"][0]
    assert chat["defaultCompletionOptions"]["temperature"] == 0.1 and chat["defaultCompletionOptions"]["topP"] == 0.5
    assert chat["chatOptions"] == {"baseSystemMessage": "Sys P."}
