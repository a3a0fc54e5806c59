"""Per-tag generation settings on Forge's model server, for real (llama.cpp's engine, the SmolLM2-135M GGUF the test extra
ships): forge.yaml's deploy.system / deploy.parameters / deploy.languages reach each tag's server entry (service.model_entry),
`GET /props?model=TAG` shows them, a request that omits a sampling field is generated with its tag's value while one it
sends wins, a chat request without a system message gets its tag's system prompt, and an entry without settings (a server
deployed before them) is served as before: greedy, nothing added."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from forge_assets.artifacts import Artifact
from forge_assets.chat import DEFAULT_SYSTEM, render_chat
from forge_assets.config import parse_config
from forge_assets.deploy import llama_server, procs, service
from forge_assets_tests.conftest import free_port

KEY = "tag-defaults-key-0123"
PY_SYSTEM = "You are the Python reviewer of the Forge project. Answer with short, idiomatic Python code only."
RS_SYSTEM = "You write Rust."
DEPLOY = {"system": "You are Forge.", "parameters": {"temperature": 0.2},
          "languages": {"python": {"system": PY_SYSTEM, "parameters": {"temperature": 0, "top_k": 7, "max_tokens": 20,
                                                                       "stop": ["\n\n\n"]}},
                        "rust": {"system": RS_SYSTEM, "parameters": {"temperature": 1.8, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                                                     "repeat_penalty": 1.05, "max_tokens": 20}}}}
PY, RS, GO = "forge-python:t", "forge-rust:t", "forge-go:t"  # GO: an entry without settings (deployed before them)


def _smol() -> Path:
    from forge_assets.export.packaged_models import PackagedModelError, packaged_gguf

    try:
        return packaged_gguf("smollm2-135m")
    except PackagedModelError as exc:
        pytest.skip(str(exc))


def _call(url: str, body: dict | None = None, *, key: str | None = KEY, host: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if host:
        headers["Host"] = host
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers,
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _ok(url: str, body: dict | None = None) -> dict:
    code, out = _call(url, body)
    assert code == 200, out
    return out


@pytest.fixture(scope="module")
def cfg():
    return parse_config({"deploy": DEPLOY})


def _gguf_version(folder: Path, language: str) -> Artifact:
    """A gguf artifact version as the export writes it, holding the SmolLM2 GGUF (linked, not copied)."""
    path = folder / f"gguf-{language}"
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"figures": {}}))
    (path / "model-Q4_1.gguf").symlink_to(_smol())
    return Artifact("gguf", language, f"v-{language}", path)


@pytest.fixture(scope="module")
def entries(cfg, tmp_path_factory) -> dict:
    """The python and rust tags' server entries, made by service.model_entry as a deploy makes them: {language: (gguf
    version, entry)}."""
    folder = tmp_path_factory.mktemp("tagversions")
    out = {}
    for lang, tag in (("python", PY), ("rust", RS)):
        g = _gguf_version(folder, lang)
        out[lang] = (g, service.model_entry(g, tag, lang, cfg))
    return out


@pytest.fixture(scope="module")
def served(entries, tmp_path_factory):
    """One server, three tags on one base: python and rust with their forge.yaml settings, go with a bare entry (no
    `generation`: a server deployed before them); an API key."""
    folder = tmp_path_factory.mktemp("tagdefaults")
    models = [entries["python"][1], entries["rust"][1]]
    models.append({"id": GO, "language": "go", "gguf": str(_smol()), "lora": None, "chat_template": None})
    (folder / "api_key").write_text(KEY + "\n")
    options = {"parallel": 1, "api_key_file": str(folder / "api_key"), "max_tokens_cap": 256}
    rec = llama_server.start(None, PY, "127.0.0.1", free_port(), folder / "server.log", n_ctx=2048, models=models, options=options)
    rec["root"] = rec["endpoint"].removesuffix("/v1")
    yield rec
    procs.terminate(rec["process"])


def test_model_entry_carries_the_tags_generation_settings(cfg, entries):
    g, entry = entries["python"]
    assert entry["generation"] == service.generation_settings(cfg, "python", g).as_dict()
    assert entry["generation"] == {"system": PY_SYSTEM, "system_source": "language",
                                   "parameters": {"temperature": 0.0, "top_k": 7, "max_tokens": 20, "stop": ["\n\n\n"]}}
    assert entries["rust"][1]["generation"]["parameters"]["temperature"] == 1.8
    assert json.loads(json.dumps(entry)) == entry  # plain JSON: it travels in the server config and the supervisor's requests
    bare = service.model_entry(g, PY, "python")  # without the config: no defaults, as before
    assert "generation" not in bare and bare == {k: v for k, v in entry.items() if k != "generation"}


def test_props_shows_each_tags_settings(served):
    root = served["root"]
    py = _ok(f"{root}/props?model={PY}")
    s = py["default_generation_settings"]
    assert (py["model"], py["language"], py["system_prompt"], py["system_source"]) == (PY, "python", PY_SYSTEM, "language")
    assert (s["temperature"], s["top_k"], s["n_predict"], s["stop"], s["top_p"]) == (0.0, 7, 20, ["\n\n\n"], 1.0)
    assert s["params"]["temperature"] == 0.0 and py["n_ctx"] == s["n_ctx"] == 2048 and py["total_slots"] == 1
    assert "<|im_start|>" in py["chat_template"] and py["aliases"] == ["forge-python", "forge-python:latest"]

    rs = _ok(f"{root}/props?model=forge-rust:latest")  # an alias names the tag it serves
    s = rs["default_generation_settings"]
    assert rs["model"] == RS and rs["system_prompt"] == RS_SYSTEM
    assert (s["temperature"], s["top_p"], s["top_k"], s["min_p"], s["repeat_penalty"], s["n_predict"], s["stop"]) == \
        (1.8, 1.0, 0, 0.0, 1.05, 20, [])

    go = _ok(f"{root}/props?model={GO}")  # no settings: greedy, nothing added, the engine's own for the rest
    s = go["default_generation_settings"]
    assert go["system_prompt"] is None and go["generation_configured"] is False
    assert (s["temperature"], s["top_p"], s["n_predict"]) == (0.0, 1.0, 256) and s["top_k"] == 40

    code, err = _call(f"{root}/props?model=forge-java:t")
    assert code == 404 and err["error"]["code"] == "model_not_found" and PY in err["error"]["message"]
    code, err = _call(f"{root}/props")
    assert code == 400 and err["error"]["code"] == "model_required"
    assert all(t in err["error"]["message"] for t in (PY, RS, GO)) and "/props?model=" in err["error"]["message"]
    # the server's guards hold for /props: a key, and a Host it answers to
    assert _call(f"{root}/props?model={PY}", key=None)[0] == 401
    assert _call(f"{root}/props?model={PY}", host="evil.example")[0] == 403


def test_sampling_defaults_per_tag_and_the_request_wins(served):
    """The engine's own generation_settings (the native /completion response, as llama-server's) show what each request
    was generated with."""
    root = served["root"]
    prompt = {"prompt": "Numbers: 1, 2, 3, 4, 5, 6,"}
    s = _ok(f"{root}/completion", {"model": PY, **prompt})["generation_settings"]
    assert (s["temperature"], s["top_k"], s["n_predict"]) == (0.0, 7, 20) and s["stop"][-1] == "\n\n\n"
    s = _ok(f"{root}/completion", {"model": RS, **prompt})["generation_settings"]
    assert (s["temperature"], s["top_p"], s["top_k"], s["min_p"], s["repeat_penalty"], s["n_predict"]) == \
        (pytest.approx(1.8), 1.0, 0, 0.0, pytest.approx(1.05), 20)
    s = _ok(f"{root}/lang/go/completion", {**prompt, "n_predict": 4})["generation_settings"]
    assert (s["temperature"], s["top_p"], s["top_k"], s["n_predict"]) == (0.0, 1.0, 40, 4)  # no settings: as before
    # what the request sends wins, key by key; its stop list replaces the tag's (the template's stops stay)
    sent = {"model": PY, **prompt, "temperature": 0.5, "top_k": 3, "min_p": 0.1, "n_predict": 5, "stop": ["xyz"]}
    out = _ok(f"{root}/completion", sent)
    s = out["generation_settings"]
    assert (s["temperature"], s["top_k"], s["min_p"], s["n_predict"]) == (0.5, 3, pytest.approx(0.1), 5)
    assert "xyz" in s["stop"] and "\n\n\n" not in s["stop"] and "<|im_end|>" in s["stop"] and out["tokens_predicted"] <= 5
    # the OpenAI completion takes the tag's max_tokens (20) over its own default of 16; a sent one wins
    assert _ok(f"{served['endpoint']}/completions", {"model": PY, **prompt})["usage"]["completion_tokens"] == 20
    assert _ok(f"{served['endpoint']}/completions", {"model": PY, **prompt, "max_tokens": 3})["usage"]["completion_tokens"] == 3
    code, err = _call(f"{root}/completion", {"model": PY, **prompt, "temperature": "hot"})
    assert code == 400 and err["error"]["param"] == "temperature"


def test_chat_without_temperature_samples_as_its_tag_says(served):
    """Seeds decide a sampled reply and not a greedy one: the python tag (temperature 0) answers the same whatever the
    seed, the rust tag (temperature 1.8) does not, and a temperature the request sends turns that around."""
    ep = served["endpoint"]
    msgs = [{"role": "user", "content": "Write a short poem about the sea."}]

    def replies(tag: str, **sent) -> set[str]:
        return {_ok(f"{ep}/chat/completions", {"model": tag, "messages": msgs, "seed": seed, **sent})["choices"][0]["message"]["content"]
                for seed in (1, 2, 3)}

    assert len(replies(PY)) == 1
    assert len(replies(RS)) > 1
    assert len(replies(RS, temperature=0)) == 1
    assert len(replies(PY, temperature=1.8, top_k=0)) > 1
    out = _ok(f"{ep}/chat/completions", {"model": RS, "messages": msgs})
    assert out["usage"]["completion_tokens"] <= 20  # the tag's max_tokens


def test_chat_without_a_system_message_gets_its_tags_system_prompt(served):
    root, ep = served["root"], served["endpoint"]
    user = [{"role": "user", "content": "Reverse a list."}]
    mine = [{"role": "system", "content": "Be brief."}, *user]

    def prompt(tag: str, msgs: list[dict]) -> str:
        return _ok(f"{root}/apply-template", {"model": tag, "messages": msgs})["prompt"]

    def prompt_tokens(tag: str, msgs: list[dict]) -> int:
        return _ok(f"{ep}/chat/completions", {"model": tag, "messages": msgs, "max_tokens": 1})["usage"]["prompt_tokens"]

    assert prompt(PY, user) == render_chat([{"role": "system", "content": PY_SYSTEM}, *user], add_generation_prompt=True)
    assert prompt(RS, user) == render_chat([{"role": "system", "content": RS_SYSTEM}, *user], add_generation_prompt=True)
    assert prompt(PY, mine) == render_chat(mine, add_generation_prompt=True)  # the request's own system message wins
    assert prompt(GO, user) == render_chat(user, add_generation_prompt=True)  # no settings: nothing added
    assert DEFAULT_SYSTEM in prompt(GO, user) and DEFAULT_SYSTEM not in prompt(PY, user)
    # the chat request itself is generated from that prompt: as long as with the system prompt sent, longer than without
    with_py = prompt_tokens(PY, [{"role": "system", "content": PY_SYSTEM}, *user])
    assert prompt_tokens(PY, user) == with_py > prompt_tokens(PY, mine)
    assert prompt_tokens(RS, user) == prompt_tokens(RS, [{"role": "system", "content": RS_SYSTEM}, *user]) < with_py
    # completions and FIM get no system prompt: the same prompt tokens on a tag with one and a tag without
    body = {"prompt": "def add(a, b):", "max_tokens": 1}
    counts = {t: _ok(f"{ep}/completions", {"model": t, **body})["usage"]["prompt_tokens"] for t in (PY, GO)}
    assert counts[PY] == counts[GO] < 10
