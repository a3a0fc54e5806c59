"""Issue 27 through `forge run`: with `deploy.approval: manual` a candidate that passes every gate is held back, the old
model keeps serving until `forge approve`, and the served tag carries the configured system prompt and sampling.

Real chain (forge-tiny, the small test config), real llama.cpp server behind the Forge router on 127.0.0.1.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from forge_assets import cli
from forge_assets.artifacts import ArtifactStore
from forge_assets.config import load_config
from forge_assets.deploy.approval import pending
from forge_assets.deploy.history import decision_events, deployed
from forge_assets_tests.conftest import assert_no_forge_processes, free_port, write_config

SYSTEM = "You are the payments team's Python reviewer. Answer with code."


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _models(endpoint: str) -> list[str]:
    with urllib.request.urlopen(f"{endpoint}/models", timeout=30) as resp:
        return [m["id"] for m in json.loads(resp.read())["data"]]


@pytest.fixture
def manual_project(tmp_path: Path, py_repo: Path, monkeypatch):
    cfg_path = write_config(tmp_path, [py_repo], languages=["python"], deploy={
        "port": free_port(), "approval": "manual", "system": SYSTEM,
        "parameters": {"temperature": 0.1, "top_p": 0.9, "repeat_penalty": 1.1},
        "languages": {"python": {"parameters": {"temperature": 0.0}}}})
    monkeypatch.setenv("FORGE_CONFIG", str(cfg_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv("FORGE_DEPLOYMENT", raising=False)
    yield cfg_path, ArtifactStore(tmp_path / "artifacts")
    cli.main(["stop"])
    assert_no_forge_processes()


@pytest.mark.slow
def test_manual_approval_keeps_the_old_model_until_approved(manual_project, capsys):
    cfg_path, store = manual_project
    cfg = load_config(cfg_path)

    # 1. The first candidate passes every gate, but nothing serves until it is approved; `forge run` still exits 0.
    assert cli.main(["run"]) == 0
    out = capsys.readouterr().out
    first = pending(store, cfg, "python")
    assert first is not None and deployed(store, "python") is None
    assert f"forge: {first.tag} passed every gate and awaits approval; nothing keeps serving." in out
    assert "approve: forge approve --language python" in out and f"validation report: {first.report}" in out
    assert first.report is not None and first.report.is_file()
    assert cli.main(["status", "--language", "python"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["awaiting_approval"]["version"] == first.version and "deployment" not in row

    # 2. forge approve serves it (blue-green, smoke-tested), and the history says who approved what.
    assert cli.main(["approve", "--language", "python"]) == 0
    assert f"approved: {first.tag} now serves on" in capsys.readouterr().out
    record = deployed(store, "python")[1]
    assert record["gguf"] == first.version and first.tag in _models(record["endpoint"])
    assert pending(store, cfg, "python") is None
    assert [e["event"] for e in decision_events(store, "python")] == ["awaiting", "deploy", "approve"]
    assert cli.main(["approve", "--language", "python"]) == 1  # nothing waits now
    assert "no candidate of `python` awaits approval" in capsys.readouterr().err

    # The tag serves with the configured system prompt and sampling (the language's temperature over deploy's).
    from forge_assets.deploy.service import generation_settings

    served = store.get("gguf", "python", first.version)
    gen = generation_settings(cfg, "python", served)
    assert gen.system == SYSTEM and gen.parameters == {"temperature": 0.0, "top_p": 0.9, "repeat_penalty": 1.1}
    # The Forge server reports them per tag, as llama-server's /props does.
    props = _get(f"{record['endpoint'].removesuffix('/v1')}/props?model={first.tag}")
    settings = props["default_generation_settings"]
    assert props["system_prompt"] == SYSTEM and settings["temperature"] == 0.0 and settings["top_p"] == 0.9
    assert settings["repeat_penalty"] == 1.1
    # Each client configuration carries them (`forge client-config`).
    assert cli.main(["client-config", "continue"]) == 0
    cont = yaml.safe_load(capsys.readouterr().out)
    chat = next(m for m in cont["models"] if m["model"] == first.tag and "chat" in m.get("roles", ["chat"]))
    assert chat["defaultCompletionOptions"]["temperature"] == 0.0 and chat["defaultCompletionOptions"]["topP"] == 0.9
    assert chat["chatOptions"]["baseSystemMessage"] == SYSTEM
    assert cli.main(["client-config", "opencode"]) == 0
    oc = json.loads(capsys.readouterr().out)
    options = next(iter(oc["provider"].values()))["models"][first.tag]["options"]
    assert options["temperature"] == 0.0 and options["top_p"] == 0.9
    assert cli.main(["client-config", "tabby"]) == 0
    assert "temperature" in capsys.readouterr().out  # Tabby has no such keys: a comment names the server's defaults
    # The Ollama Modelfile the ollama target writes for this GGUF (Ollama itself cannot run here).
    from forge_assets.deploy import ollama_target

    template, stops = ollama_target.template_for(served.path, system=gen.system)
    text = ollama_target.modelfile("model.gguf", template, gen.system, ollama_target.parameters_for(gen.parameters, stops, 4096))
    assert f'SYSTEM """{SYSTEM}"""' in text and "PARAMETER temperature 0" in text and "PARAMETER top_p 0.9" in text
    assert "PARAMETER repeat_penalty 1.1" in text and "You are Qwen" not in text

    # 3. A new candidate (merged GGUF: a new export of the same adapter) waits; the approved one keeps serving.
    data = yaml.safe_load(cfg_path.read_text())
    data["deploy"]["merge"] = True
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    assert cli.main(["run"]) == 0
    out = capsys.readouterr().out
    second = pending(store, cfg, "python")
    assert second is not None and second.version != first.version
    assert f"forge: {second.tag} passed every gate and awaits approval; {first.tag} keeps serving." in out
    assert deployed(store, "python")[1]["gguf"] == first.version and first.tag in _models(record["endpoint"])
    assert second.tag not in _models(record["endpoint"])

    # Approving the older version fails clearly: the newer candidate superseded it.
    assert cli.main(["approve", "--language", "python", "--version", first.version[:12]]) == 1
    err = capsys.readouterr().err
    assert f"`gguf` {first.version[:12]} of `python` is no longer the candidate: {second.version[:12]}" in err
    assert "superseded it" in err and f"forge rollback --language python --to {first.version[:12]}" in err
    assert cli.main(["approve", "--language", "python", "--version", "0" * 12]) == 1
    assert "no `gguf` version of `python` matches" in capsys.readouterr().err

    # 4. Approving the new one serves it in place of the old one.
    assert cli.main(["approve", "--language", "python", "--version", second.tag]) == 0
    capsys.readouterr()
    record = deployed(store, "python")[1]
    assert record["gguf"] == second.version and second.tag in _models(record["endpoint"])
    assert [e["event"] for e in decision_events(store, "python")][-3:] == ["awaiting", "deploy", "approve"]
    assert cli.main(["history", "--language", "python"]) == 0
    hist = capsys.readouterr().out
    assert "awaits approval" in hist and "approve" in hist and "<- serving" in hist

    # 5. Changing only the serving settings redeploys the same GGUF with them: nothing is retrained or re-exported, and
    # no approval is asked for (the model did not change).
    ggufs, adapters = len(store.versions("gguf", "python")), len(store.versions("adapter", "python"))
    before = store.promoted("deployment", "python").version
    data = yaml.safe_load(cfg_path.read_text())
    data["deploy"]["languages"]["python"]["parameters"]["temperature"] = 0.3
    cfg_path.write_text(yaml.safe_dump(data))
    assert cli.main(["run"]) == 0
    assert "awaits approval" not in capsys.readouterr().out
    assert store.promoted("deployment", "python").version != before
    assert deployed(store, "python")[1]["gguf"] == second.version
    assert (len(store.versions("gguf", "python")), len(store.versions("adapter", "python"))) == (ggufs, adapters)
    props = _get(f"{record['endpoint'].removesuffix('/v1')}/props?model={second.tag}")
    assert props["default_generation_settings"]["temperature"] == 0.3 and props["system_prompt"] == SYSTEM
