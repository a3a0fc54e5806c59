"""The deploy-target interface (forge_assets.deploy.targets): one object per target that config, clients, service and
the CLI all read, instead of each knowing every target by name.

The client-config digests below were taken from the three configurations (OpenCode, Continue, Tabby) rendered for every
target before the targets moved into targets.py (when clients.py branched on the target's name): the same Endpoint
endpoints must still give byte-identical files. No server runs here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import get_args

import pytest

from forge_assets import cli
from forge_assets.artifacts import ArtifactError, ArtifactStore
from forge_assets.config import ConfigError, DeployConfig, load_config, parse_config
from forge_assets.deploy import clients, service, targets
from forge_assets.deploy.clients import Endpoint, ServedModel
from forge_assets.deploy.targets import TARGET_NAMES, TARGETS, DeployTarget, UnknownTargetError
from forge_assets_tests.conftest import write_config

# ------------------------------------------------------------------------------------------------ one object per name


def test_every_allowed_target_has_one_target_object() -> None:
    allowed = get_args(DeployConfig.model_fields["target"].annotation)
    assert allowed == TARGET_NAMES == tuple(TARGETS) == clients.TARGETS == ("llama-server", "ollama", "mlx-lm", "vllm")
    assert DeployConfig().target == targets.DEFAULT_TARGET == "llama-server"
    for name in allowed:
        t = targets.target(name)
        assert isinstance(t, DeployTarget) and t.name == name and t is TARGETS[name]
        assert type(t).deploy is not DeployTarget.deploy, f"{name} does not implement deploy"
        assert parse_config({"deploy": {"target": name}}).deploy.target == name
    assert [type(t).__name__ for t in TARGETS.values()] == ["LlamaServerTarget", "OllamaTarget", "MlxTarget", "VllmTarget"]


def test_an_unknown_target_names_the_valid_ones() -> None:
    with pytest.raises(UnknownTargetError, match=r"unknown deploy target 'lama-server'; expected one of "
                                                 r"llama-server, ollama, mlx-lm, vllm") as err:
        targets.target("lama-server")
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownTargetError, match="expected one of"):
        targets.target(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"deploy.target.*'llama-server', 'ollama', 'mlx-lm' or 'vllm' \(got 'lama-server'\)"):
        parse_config({"deploy": {"target": "lama-server"}})
    with pytest.raises(ValueError, match="unknown target 'tgi'; expected one of llama-server, ollama, mlx-lm, vllm"):
        Endpoint("tgi", "http://127.0.0.1:8080/v1", [ServedModel("forge-python:1", "python", 4096, 512)])


def test_config_imports_no_serving_code() -> None:
    """config.py reads the names from targets.py at import; that must not pull in a server module."""
    import subprocess
    import sys

    code = ("import sys, forge_assets.config; mods = [m for m in sys.modules if m.startswith('forge_assets.deploy.')]; "
            "print(','.join(sorted(mods)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "forge_assets.deploy.targets"


def test_records_name_their_target_and_old_records_were_llama_server() -> None:
    assert targets.of_record({"target": "ollama"}) is TARGETS["ollama"]
    assert targets.of_record({"target": "mlx-lm"}) is TARGETS["mlx-lm"]
    assert targets.of_record(None) is targets.of_record({}) is targets.of_record({"target": ["x"]}) is TARGETS["llama-server"]


def test_deploy_errors_are_what_rollback_caught_before() -> None:
    from forge_assets.deploy import llama_server, ollama_target

    assert targets.deploy_errors() == (llama_server.DeployError, ollama_target.OllamaDeployError)


# ------------------------------------------------------------------------------------------------ client facts

FACTS = {  # target: (Continue provider, Continue apiBase, Tabby kind, Tabby completion endpoint for "rust", /v1 base, runs here)
    "llama-server": ("openai", "http://h:1/v1/", "llama.cpp/completion", "http://h:1/lang/rust", True, True),
    "ollama": ("ollama", "http://h:1/", "ollama/completion", "http://h:1", False, True),
    "mlx-lm": ("openai", "http://h:1/v1/", "openai/legacy_completion_no_fim", "http://h:1/v1", True, True),
    "vllm": ("openai", "http://h:1/v1/", "vllm/completion", "http://h:1/v1", True, False),
}


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_client_facts(name: str) -> None:
    t = targets.target(name)
    s = Endpoint(name, "http://h:1/v1", [ServedModel("forge-rust:1", "rust", 4096, 512)])
    assert s.deploy_target is t
    assert (t.continue_provider, t.continue_api_base(s), t.tabby_completion_kind, t.tabby_completion_endpoint(s, "rust"),
            t.openai_base_url, t.runs_here) == FACTS[name]
    assert clients.TABBY_COMPLETION_KIND[name] == t.tabby_completion_kind
    if not t.openai_base_url:
        assert Endpoint(name, "http://h:1", s.models).base_url == "http://h:1"
    else:
        with pytest.raises(ValueError, match=f"{name}: base_url must be the OpenAI-style base ending in /v1"):
            Endpoint(name, "http://h:1", s.models)


BASES = {"llama-server": ["http://127.0.0.1:8088/v1", "http://10.0.0.5:8088/prefix/v1/"],
         "ollama": ["http://127.0.0.1:11434", "http://127.0.0.1:11434/v1"],
         "mlx-lm": ["http://127.0.0.1:8080/v1"],
         "vllm": ["http://gpu-box:8000/v1"]}
PY = ServedModel("forge-python:1a2b3c4d5e6f", "python", 32768, 4096)
RS = ServedModel("forge-rust:0123456789ab", "rust", 16384, 2048, fim="starcoder")
GO = ServedModel("forge-go:fedcba987654", "go", 8192, 1024, tool_call=False, fim="none")

# sha256 of every rendering of (target, client) over BASES x api key (none, one) x language (default, rust, go),
# taken before the refactor.
BEFORE = {
    ("llama-server", "continue"): "00a8983ecf2011b3096483398a1615d15f7aa5b21e4be97888b7c8a678f2fef4",
    ("llama-server", "opencode"): "132c2c42ca486e912aa349a4d47c8eb94ecc2c1874636f62c21ae088428f5ab7",
    ("llama-server", "tabby"): "b8731d995bb3118870e6c1c63ea743f994dee8c5df498b4a41282c8fba269604",
    ("mlx-lm", "continue"): "586bf5fed7ee0ba05b51d31f154969e064e6c4d548baac70a7719e6d31909d2d",
    ("mlx-lm", "opencode"): "abaf0a9659f8ce88d08a2b0dbb62af4dcb811cbe12cc53f935d964a198fcca39",
    ("mlx-lm", "tabby"): "159c6943deb812414e7226bfb7c3a03cf685c0986eef4ebabd42066251de4f35",
    ("ollama", "continue"): "f291e30259aff60902ae52e2e2db0bd898e2e727e06cc377cdd831d5014a3aa7",
    ("ollama", "opencode"): "73461bb46857060726f5457d0203dec2b88e0170b79f5b8e42b98eae182d82b1",
    ("ollama", "tabby"): "4f1eea5e11e481e1ab95b9ee4671303e75d277f0170f03c0562cb194663ed0c7",
    ("vllm", "continue"): "7813270625bfb21ad3f60f1de1775acd564271c2f24e65bb9606d27fd693ec70",
    ("vllm", "opencode"): "21de18af1cdca8316d91bf045a0c119498e022f10674c903ec7a41e8fc1f1ef2",
    ("vllm", "tabby"): "4ef362585ca3e0189077e1fc88365bf0d7ce1314bddfa5ee48d04656f6cef0c7",
}


def _renders(name: str, kind: str) -> dict[str, str]:
    out = {}
    for i, base in enumerate(BASES[name]):
        for key in (None, "s3cret-key"):
            s = Endpoint(name, base, [PY, RS, GO], api_key=key)
            for lang in (None, "rust", "go"):
                out[f"{name}|{i}|{key}|{lang}|{kind}"] = clients.render(kind, s, lang)[1]
    return out


@pytest.mark.parametrize("name", TARGET_NAMES)
@pytest.mark.parametrize("kind", clients.CLIENT_KINDS)
def test_client_configs_are_the_same_as_before_the_targets_moved(name: str, kind: str) -> None:
    texts = _renders(name, kind)
    digest = hashlib.sha256("\n\x00".join(texts[k] for k in sorted(texts)).encode()).hexdigest()
    assert digest == BEFORE[(name, kind)], f"{name} {kind} changed:\n" + texts[min(texts)]
    tabby = clients.tabby_config(Endpoint(name, BASES[name][0], [PY]))
    note = targets.target(name).tabby_note
    assert (note in tabby.splitlines()) if note else all(not line.startswith("# llama.cpp/") for line in tabby.splitlines())


# ------------------------------------------------------------------------------------------------ service and CLI dispatch


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    def make(target: str):
        cfg_path = write_config(tmp_path, [], deploy={"target": target, "ollama_host": "http://127.0.0.1:1"})
        monkeypatch.setenv("FORGE_CONFIG", str(cfg_path))
        return load_config(cfg_path), ArtifactStore(tmp_path / "artifacts")
    return make


def _gguf(store: ArtifactStore, language: str, label: str):
    with store.write("gguf", language, {"inputs": {}, "figures": {}}) as out:
        (out.path / "label.txt").write_text(label)  # no *.gguf, no tokenizer: fim_scheme says "qwen"
    return out.artifact


def test_deploy_gguf_served_status_and_stop_go_through_the_target(project, monkeypatch, capsys) -> None:
    cfg, store = project("ollama")
    t = TARGETS["ollama"]
    calls = []

    def deploy(store_, cfg_, language, gguf, tag, log):
        calls.append((language, tag))
        log(f"fake deploy of {tag}")
        return {"target": t.name, "tag": tag, "endpoint": "http://127.0.0.1:1", "gguf": gguf.version, "smoke": {"ok": True},
                "latest_tag": f"forge-{language}:latest", "context": 8192}

    monkeypatch.setattr(t, "deploy", deploy)
    monkeypatch.setattr(t, "describe", lambda store_, language, record: {"health": f"fake: {record['tag']}"})
    g = _gguf(store, "python", "a")
    logged: list[str] = []
    art, record, reused = service.deploy_gguf(store, cfg, "python", g, log=logged.append)
    tag = f"forge-python:{g.version[:12]}"
    assert not reused and calls == [("python", tag)] and logged == [f"fake deploy of {tag}"]
    assert record["fim"] == "qwen" and json.loads((art.path / "deployment.json").read_text())["target"] == "ollama"
    assert (art.path / "clients" / "tabby-config.toml").read_text().count("ollama/completion") == 1
    assert service.deploy_gguf(store, cfg, "python", g, log=logged.append)[2] is True  # health: Ollama keeps its tags
    assert len(calls) == 1

    s = service.served(store, cfg)
    assert (s.target, s.base_url, [m.tag for m in s.models], s.models[0].context) == ("ollama", "http://127.0.0.1:1", [tag], 8192)
    vllm_cfg, _ = project("vllm")
    with pytest.raises(ArtifactError, match="no language is deployed to vllm yet"):
        service.served(store, vllm_cfg)

    capsys.readouterr()
    assert cli.status(["python"], endpoint=False) == 0
    assert json.loads(capsys.readouterr().out)["health"] == f"fake: {tag}"
    assert cli.stop(["python"]) == 0  # nothing of llama.cpp or mlx-lm recorded for python
    assert capsys.readouterr().out == "forge: python: no llama.cpp deployment recorded; nothing to stop\n"


def test_mlx_serves_one_language_per_client_config(project) -> None:
    cfg, store = project("mlx-lm")
    records = {lang: {"target": "mlx-lm", "tag": f"forge-{lang}:v", "endpoint": f"http://127.0.0.1:{port}/v1", "context": 4096,
                      "client_model": "default_model"}
               for lang, port in (("python", 9001), ("rust", 9002))}
    s = service.served(store, cfg, extra=records)
    assert (s.base_url, [m.language for m in s.models], s.models[0].tag) == ("http://127.0.0.1:9001/v1", ["python"], "default_model")
    s = service.served(store, cfg, extra=records, language="rust")
    assert (s.base_url, [m.language for m in s.models]) == ("http://127.0.0.1:9002/v1", ["rust"])
    assert TARGETS["mlx-lm"].health(store, cfg, "python", "forge-python:v") is False  # no mlx.json: not serving
    assert TARGETS["mlx-lm"].stop(store, cfg, None) == []


def test_vllm_plans_describe_their_command(project) -> None:
    cfg, store = project("vllm")
    t = TARGETS["vllm"]
    assert t.health(store, cfg, "python", "forge-python:v") is True and t.stop(store, cfg, None) == []
    assert t.describe(store, "python", {"command": "vllm serve base"}) == {
        "health": "not run by Forge (vLLM needs a GPU); start it with: vllm serve base"}
    with pytest.raises(ArtifactError, match="nothing is deployed on Forge's server yet"):
        TARGETS["llama-server"].served(store, cfg)


def test_llama_server_deploys_through_a_running_forge_service(project, monkeypatch) -> None:
    """With `forge service install` running, the llama-server target hands the deploy to the supervisor (its children
    serve), not to llama_server.deploy; the record and client configs come from the state it returns."""
    from forge_assets.deploy import llama_server, supervisor

    cfg, store = project("llama-server")
    g = _gguf(store, "python", "a")
    tag = f"forge-python:{g.version[:12]}"
    entry = {"id": tag, "language": "python", "gguf": "/models/base.gguf", "lora": "/models/python.gguf", "chat_template": None, "fim": "qwen"}
    submitted = []

    def submit(state_dir, request, timeout=900.0, poll=0.1):
        submitted.append((state_dir, request))
        state = {"endpoint": "http://127.0.0.1:1/v1", "models": [entry], "n_ctx": 4096, "tags": [tag], "smoke": {"ok": True}}
        llama_server._write_state(state_dir, state)
        return state

    monkeypatch.setattr(service, "model_entry", lambda gguf, tag_, language, cfg=None: dict(entry))
    monkeypatch.setattr(supervisor, "running", lambda state_dir: True)
    monkeypatch.setattr(supervisor, "submit", submit)
    monkeypatch.setattr(llama_server, "deploy", lambda *a, **k: pytest.fail("llama_server.deploy ran beside a running service"))
    logged: list[str] = []
    art, record, reused = service.deploy_gguf(store, cfg, "python", g, log=logged.append)
    assert not reused and len(submitted) == 1 and submitted[0][0] == service.endpoint_dir(store)
    assert submitted[0][1]["tag"] == tag and submitted[0][1]["entry"] == entry and submitted[0][1]["n_ctx"] == service.MIN_CONTEXT
    assert record == {"target": "llama-server", "tag": tag, "endpoint": "http://127.0.0.1:1/v1", "gguf": g.version, "smoke": {"ok": True},
                      "tags": [tag], "context": 4096, "unmerged": True, "fim": "qwen"}
    assert logged == ["deployed through the Forge service (`forge service status`); it keeps serving across reboots",
                      f"{tag} serves on http://127.0.0.1:1/v1 with no other tag from one server (context 4096, base + LoRA)."]
    tabby = (art.path / "clients" / "tabby-config.toml").read_text()
    assert 'api_endpoint = "http://127.0.0.1:1/lang/python"' in tabby and TARGETS["llama-server"].tabby_note in tabby
