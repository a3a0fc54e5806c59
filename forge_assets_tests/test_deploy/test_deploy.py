"""Deploy: a real llama.cpp server on 127.0.0.1, and Ollama's protocol through OllamaTestDouble."""

import json
import urllib.request
from pathlib import Path

import pytest

from forge_assets.deploy import llama_server, ollama_target
from forge_assets.deploy.ports import port_for
from forge_assets.files import pid_alive
from forge_assets_tests.conftest import free_port
from forge_assets_tests.test_deploy.ollama_double import OllamaTestDouble


def _chat(endpoint: str, tag: str) -> dict:
    req = urllib.request.Request(f"{endpoint}/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": tag, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_llama_server_deploys_answers_and_stops(q8_gguf: Path, tmp_path: Path):
    port = free_port()
    state = llama_server.deploy(q8_gguf, "forge-python:v1", "127.0.0.1", port, tmp_path)
    try:
        assert state["endpoint"] == f"http://127.0.0.1:{port}/v1" and pid_alive(state["pid"])
        assert state["smoke"]["completion_tokens"] > 0
        assert _chat(state["endpoint"], "forge-python:v1")["model"] == "forge-python:v1"
        assert llama_server.read_state(tmp_path)["tag"] == "forge-python:v1"
    finally:
        stopped = llama_server.stop(tmp_path)
    assert stopped["pid"] == state["pid"] and not pid_alive(state["pid"])
    assert llama_server.port_free("127.0.0.1", port) and llama_server.read_state(tmp_path) is None


@pytest.mark.slow
def test_failed_redeploy_restores_the_previous_model(q8_gguf: Path, tmp_path: Path):
    port = free_port()
    llama_server.deploy(q8_gguf, "forge-python:good", "127.0.0.1", port, tmp_path)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    try:
        with pytest.raises(llama_server.DeployError, match="previous deployment forge-python:good keeps serving"):
            llama_server.deploy(broken, "forge-python:bad", "127.0.0.1", port, tmp_path)
        state = llama_server.read_state(tmp_path)
        assert state["tag"] == "forge-python:good" and pid_alive(state["pid"])
        assert _chat(state["endpoint"], "forge-python:good")["choices"]
    finally:
        llama_server.stop(tmp_path)


def test_busy_port_is_a_clear_error(q8_gguf: Path, tmp_path: Path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(llama_server.DeployError, match=f"port {s.getsockname()[1]} .* in use"):
            llama_server.start(q8_gguf, "t", "127.0.0.1", s.getsockname()[1], tmp_path / "log")


def test_ports_are_stable_per_language(tmp_path: Path):
    assert port_for(tmp_path, "python", 9000) == 9000
    assert port_for(tmp_path, "rust", 9000) == 9001
    assert port_for(tmp_path, "python", 9000) == 9000


def test_ollama_template_and_stops_come_from_the_tokenizer(tiny_model: Path):
    template, stops = ollama_target.template_for(tiny_model)
    assert stops == ["<|im_end|>", "<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"]
    assert "<|im_start|>{{ .Role }}" in template and template == ollama_target.qwen25_template()


def test_ollama_deploy_against_the_test_double(q8_gguf: Path, tiny_model: Path, tmp_path: Path):
    with OllamaTestDouble(tmp_path) as ollama:
        out = ollama_target.deploy(q8_gguf, "forge-python:abc", tiny_model, ollama.host, latest_tag="forge-python:latest")
        assert out["digest"] in ollama.blobs
        model = ollama.models["forge-python:abc"]
        assert model["parameters"]["stop"] == ["<|im_end|>", "<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"] and "{{ .Content }}" in model["template"]
        assert "forge-python:latest" in ollama.models
        assert "<|im_end|>" not in out["smoke"]["reply"]
        assert ("POST", "/api/create") in ollama.requests and ("POST", "/api/chat") in ollama.requests


def test_ollama_failure_keeps_previous_tags(q8_gguf: Path, tiny_model: Path, tmp_path: Path):
    with OllamaTestDouble(tmp_path) as ollama:
        ollama_target.deploy(q8_gguf, "forge-python:one", tiny_model, ollama.host, latest_tag="forge-python:latest")
        ollama.fail_create = True
        with pytest.raises(ollama_target.OllamaDeployError, match="refused forge-python:two"):
            ollama_target.deploy(q8_gguf, "forge-python:two", tiny_model, ollama.host, latest_tag="forge-python:latest")
        assert ollama.models["forge-python:latest"]["digest"] == ollama.models["forge-python:one"]["digest"]
        assert "forge-python:two" not in ollama.models


def test_ollama_unreachable_is_a_clear_error(q8_gguf: Path, tiny_model: Path):
    with pytest.raises(ollama_target.OllamaDeployError, match="cannot reach Ollama"):
        ollama_target.deploy(q8_gguf, "forge-python:x", tiny_model, f"http://127.0.0.1:{free_port()}")


def test_ollama_smoke_failure_leaves_latest_untouched(q8_gguf: Path, tiny_model: Path, tmp_path: Path):
    broken = tmp_path / "model-Q8_0.gguf"
    broken.write_bytes(q8_gguf.read_bytes()[: q8_gguf.stat().st_size // 2])  # Ollama accepts the blob; loading it fails
    with OllamaTestDouble(tmp_path) as ollama:
        ollama_target.deploy(q8_gguf, "forge-python:one", tiny_model, ollama.host, latest_tag="forge-python:latest")
        with pytest.raises(ollama_target.OllamaDeployError, match="failed the smoke-test chat for forge-python:two.*forge-python:latest and the other existing tags are untouched"):
            ollama_target.deploy(broken, "forge-python:two", tiny_model, ollama.host, latest_tag="forge-python:latest")
        assert ollama.models["forge-python:latest"]["digest"] == ollama.models["forge-python:one"]["digest"]
        assert "forge-python:two" not in ollama.models  # the unproven tag was deleted again
        assert ollama_target.health(ollama.host, "forge-python:latest")["health"] == "up"
        assert ollama_target.health(ollama.host, "forge-python:two")["health"].startswith("down: Ollama at")
