"""Client configurations for deployed tags (forge_assets.deploy.clients): OpenCode, Continue, Tabby.

The Continue file is validated by Continue's own npm package (@continuedev/config-yaml, pinned) and the
OpenCode file by OpenCode itself (opencode-ai, pinned: `opencode debug config` loads and validates a project's
opencode.json, `opencode models forge` lists the models it resolved). Both are npm-installed once into a persistent
cache ($FORGE_TEST_CACHE, else ~/.cache/forge-tests). Without npm/node these tests skip, or fail when $CI is set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge_assets.chat import FIM_STOP_TOKENS
from forge_assets.deploy import clients
from forge_assets.deploy.clients import Endpoint, ServedModel
from forge_assets.files import locked
from forge_assets_tests.test_deploy.opencode_client import cache_root

CONFIG_YAML_PACKAGE = "@continuedev/config-yaml"
CONFIG_YAML_VERSION = "1.42.0"  # `npm view @continuedev/config-yaml version`, pinned
OPENCODE_VERSION = "1.18.33"
VALIDATE_SCRIPT = Path(__file__).with_name("continue_validate.mjs")

QWEN_FIM_CONTINUE = "<|fim_prefix|>{{{prefix}}}<|fim_suffix|>{{{suffix}}}<|fim_middle|>"
QWEN_FIM_TABBY = "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"

PY = ServedModel("forge-python:1a2b3c4d5e6f", "python", context=32768, max_output=4096)
RS = ServedModel("forge-rust:9f8e7d6c5b4a", "rust", context=16384, max_output=2048)
TS = ServedModel("forge-typescript:0a1b2c3d4e5f", "typescript", context=8192, max_output=1024)

BASES = {
    "llama-server": ("http://127.0.0.1:8088/v1", "http://127.0.0.1:8088/v1", "http://127.0.0.1:8088"),
    "ollama": ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1", "http://127.0.0.1:11434"),
    "mlx-lm": ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
    "vllm": ("http://gpu-box:8000/v1/", "http://gpu-box:8000/v1", "http://gpu-box:8000"),  # trailing slash tolerated
}  # target: (base_url given, its OpenAI-style base, its server root)


def served(target: str, models: tuple[ServedModel, ...] = (PY, RS, TS)) -> Endpoint:
    return Endpoint(target, BASES[target][0], list(models))


# ------------------------------------------------------------------------------------------------ input checks


def test_served_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        Endpoint("tgi", "http://127.0.0.1:8088/v1", [PY])
    with pytest.raises(ValueError, match="ending in /v1"):
        Endpoint("llama-server", "http://127.0.0.1:8088", [PY])
    with pytest.raises(ValueError, match="http"):
        Endpoint("vllm", "127.0.0.1:8000/v1", [PY])
    with pytest.raises(ValueError, match="control characters"):
        Endpoint("vllm", "http://127.0.0.1:8000/v1\n# injected", [PY])
    with pytest.raises(ValueError, match="empty"):
        Endpoint("vllm", "http://127.0.0.1:8000/v1", [])
    with pytest.raises(ValueError, match="repeats language python"):
        Endpoint("vllm", "http://127.0.0.1:8000/v1", [PY, ServedModel("forge-python:ffffffffffff", "python", 4096, 512)])
    with pytest.raises(ValueError, match="max_output < context"):
        ServedModel("forge-python:1", "python", context=2048, max_output=2048)
    with pytest.raises(ValueError, match="without spaces"):
        ServedModel("forge python", "python", context=2048, max_output=256)


def test_ollama_base_url_may_carry_v1() -> None:
    for base in ("http://127.0.0.1:11434", "http://127.0.0.1:11434/", "http://127.0.0.1:11434/v1"):
        s = Endpoint("ollama", base, [PY])
        assert (s.openai_base, s.server_root) == ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434")


@pytest.mark.parametrize("kind", clients.CLIENT_KINDS)
def test_unknown_language_names_the_deployed_ones(kind: str) -> None:
    s = served("llama-server")
    with pytest.raises(ValueError) as info:
        clients.render(kind, s, "cobol")
    message = str(info.value)
    assert "'cobol'" in message and "python, rust, typescript" in message
    fn = {"opencode": clients.opencode_config, "continue": clients.continue_config, "tabby": clients.tabby_config}[kind]
    with pytest.raises(ValueError, match="deployed languages: python, rust, typescript"):
        fn(s, "cobol")


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown client kind"):
        clients.render("cursor", served("vllm"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ OpenCode

# The slice of OpenCode's config type used here, as @opencode-ai/sdk@1.18.33 declares it (dist/gen/types.gen.d.ts:
# `Config`, `ProviderConfig`): key -> the Python type its value must have; nested dicts are objects whose keys must
# all be known. opencode.ai/config.json itself is not published in any npm package (checked: opencode-ai ships only
# a launcher and the platform binaries), so the real client is run as well (test_opencode_itself_accepts_the_config).
OPENCODE_MODEL = {"id": str, "name": str, "release_date": str, "attachment": bool, "reasoning": bool,
                  "temperature": bool, "tool_call": bool, "limit": {"context": int, "output": int},
                  "experimental": bool, "options": dict, "headers": dict}
OPENCODE_PROVIDER = {"api": str, "name": str, "env": list, "id": str, "npm": str, "whitelist": list, "blacklist": list,
                     "options": {"apiKey": str, "baseURL": str, "timeout": int, "setCacheKey": bool},
                     "models": ("map", OPENCODE_MODEL)}
OPENCODE_CONFIG = {"$schema": str, "model": str, "small_model": str, "provider": ("map", OPENCODE_PROVIDER)}


def check_shape(value: Any, spec: Any, path: str = "") -> list[str]:
    """Problems of value against spec (see OPENCODE_CONFIG); [] when it fits."""
    if isinstance(spec, tuple):  # ("map", value spec): an object with free keys
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        return [p for k, v in value.items() for p in check_shape(v, spec[1], f"{path}.{k}")]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        problems = [f"{path}.{k}: unknown key" for k in value if k not in spec]
        return problems + [p for k, v in value.items() if k in spec for p in check_shape(v, spec[k], f"{path}.{k}")]
    if spec is int and isinstance(value, bool) or not isinstance(value, spec):
        return [f"{path}: expected {spec.__name__}, got {value!r}"]
    return []


def test_shape_checker_catches_mistakes() -> None:
    good = clients.opencode_config(served("vllm"))
    assert check_shape(good, OPENCODE_CONFIG) == []
    bad = json.loads(json.dumps(good))
    bad["provider"]["forge"]["models"][PY.tag]["limit"]["context"] = "32k"
    bad["provider"]["forge"]["options"]["baseUrl"] = "http://x/v1"
    bad["modle"] = "forge/x"
    assert sorted(check_shape(bad, OPENCODE_CONFIG)) == sorted([
        f".provider.forge.models.{PY.tag}.limit.context: expected int, got '32k'",
        ".provider.forge.options.baseUrl: unknown key", ".modle: unknown key"])


def _rendered(kind: str, target: str, language: str | None, file_name: str, parse) -> tuple:
    """(the Endpoint of `target`, its `kind` client config rendered for `language` and parsed); the file name checked."""
    s = served(target)
    name, text = clients.render(kind, s, language)
    assert name == file_name
    return s, parse(text)


@pytest.mark.parametrize("target", clients.TARGETS)
def test_opencode_config(target: str) -> None:
    s, cfg = _rendered("opencode", target, None, "opencode.json", json.loads)
    assert check_shape(cfg, OPENCODE_CONFIG) == []
    assert cfg["$schema"] == "https://opencode.ai/config.json"
    assert list(cfg["provider"]) == ["forge"]
    provider = cfg["provider"]["forge"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["name"] and provider["options"] == {"baseURL": BASES[target][1]}
    assert provider["models"] == {
        m.tag: {"name": m.tag.split(":")[0], "tool_call": True, "limit": {"context": m.context, "output": m.max_output}}
        for m in (PY, RS, TS)
    }
    assert cfg["model"] == f"forge/{PY.tag}"  # default: the first model
    assert clients.opencode_config(s, "rust")["model"] == f"forge/{RS.tag}"
    assert clients.opencode_config(s, "typescript")["small_model"] == f"forge/{TS.tag}"


def test_opencode_tool_call_follows_the_model() -> None:
    no_tools = ServedModel("forge-python:1a2b3c4d5e6f", "python", 2048, 512, tool_call=False)
    cfg = clients.opencode_config(Endpoint("ollama", "http://127.0.0.1:11434", [no_tools, RS]))
    assert cfg["provider"]["forge"]["models"][no_tools.tag]["tool_call"] is False
    assert cfg["provider"]["forge"]["models"][RS.tag]["tool_call"] is True


# ------------------------------------------------------------------------------------------------ Continue


@pytest.mark.parametrize("target", clients.TARGETS)
def test_continue_config(target: str) -> None:
    s, cfg = _rendered("continue", target, "rust", "continue-config.yaml", yaml.safe_load)
    assert cfg["name"] and cfg["version"] and cfg["schema"] == "v1"
    provider, api_base = ("ollama", BASES[target][2] + "/") if target == "ollama" else ("openai", BASES[target][1] + "/")
    chat = [m for m in cfg["models"] if "chat" in m["roles"]]
    assert [m["model"] for m in chat] == [RS.tag, PY.tag, TS.tag]  # the chosen language first: Continue's default
    by_tag = {m.tag: m for m in (PY, RS, TS)}
    for m in chat:
        assert m["roles"] == ["chat", "edit", "apply"]
        assert (m["provider"], m["apiBase"]) == (provider, api_base)
        assert m["capabilities"] == ["tool_use"]
        assert m["defaultCompletionOptions"] == {"contextLength": by_tag[m["model"]].context,
                                                 "maxTokens": by_tag[m["model"]].max_output}
    auto = [m for m in cfg["models"] if "autocomplete" in m["roles"]]
    assert len(auto) == 1 and auto[0]["roles"] == ["autocomplete"]
    auto = auto[0]
    assert (auto["provider"], auto["apiBase"], auto["model"]) == (provider, api_base, RS.tag)
    assert auto["promptTemplates"] == {"autocomplete": QWEN_FIM_CONTINUE}
    opts = auto["defaultCompletionOptions"]
    assert opts["contextLength"] == RS.context and 0 < opts["maxTokens"] <= RS.max_output
    assert {"<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|im_end|>"} <= set(opts["stop"])
    assert opts["stop"] == FIM_STOP_TOKENS
    assert len({m["name"] for m in cfg["models"]}) == len(cfg["models"])  # names are unique
    # default language: the first model
    assert yaml.safe_load(clients.continue_config(s))["models"][-1]["model"] == PY.tag


# ------------------------------------------------------------------------------------------------ Tabby

# From TabbyML/tabby: crates/http-api-bindings/src/completion/mod.rs (kinds) and crates/tabby-common/src/config.rs
# (HttpModelConfig's fields).
TABBY_COMPLETION_KINDS = {"llama.cpp/completion", "ollama/completion", "mistral/completion", "openai/completion",
                          "openai/legacy_completion", "deepseek/completion", "openai/legacy_completion_no_fim",
                          "vllm/completion"}
TABBY_HTTP_FIELDS = {"kind", "api_endpoint", "api_key", "rate_limit", "model_name", "prompt_template", "chat_template",
                     "supported_models", "additional_stop_words"}
TABBY_EXPECTED = {  # target: (completion kind, its api_endpoint)
    "llama-server": ("llama.cpp/completion", "http://127.0.0.1:8088/lang/typescript"),  # Forge: per-language native path
    "ollama": ("ollama/completion", "http://127.0.0.1:11434"),
    "mlx-lm": ("openai/legacy_completion_no_fim", "http://127.0.0.1:8080/v1"),
    "vllm": ("vllm/completion", "http://gpu-box:8000/v1"),
}


@pytest.mark.parametrize("target", clients.TARGETS)
def test_tabby_config(target: str) -> None:
    s, cfg = _rendered("tabby", target, "typescript", "tabby-config.toml", tomllib.loads)
    assert set(cfg) == {"model"} and set(cfg["model"]) == {"completion", "chat"}
    completion, chat = cfg["model"]["completion"]["http"], cfg["model"]["chat"]["http"]
    assert set(completion) <= TABBY_HTTP_FIELDS and set(chat) <= TABBY_HTTP_FIELDS
    assert completion["kind"] in TABBY_COMPLETION_KINDS
    assert (completion["kind"], completion["api_endpoint"]) == TABBY_EXPECTED[target]
    assert completion["model_name"] == TS.tag
    assert completion["prompt_template"] == QWEN_FIM_TABBY
    assert chat["kind"] == "openai/chat"
    assert chat["model_name"] == TS.tag
    assert chat["api_endpoint"] == BASES[target][1] and not chat["api_endpoint"].endswith("/chat/completions")
    assert chat["supported_models"] == [TS.tag, PY.tag, RS.tag]
    assert tomllib.loads(clients.tabby_config(s))["model"]["completion"]["http"]["model_name"] == PY.tag


def test_tabby_strings_are_escaped() -> None:
    odd = ServedModel('forge-c"sharp\\x:é1', "c#", context=4096, max_output=512)
    cfg = tomllib.loads(clients.tabby_config(Endpoint("vllm", "http://127.0.0.1:8000/v1", [odd])))
    assert cfg["model"]["completion"]["http"]["model_name"] == odd.tag
    assert cfg["model"]["chat"]["http"]["supported_models"] == [odd.tag]


# ------------------------------------------------------------------------------------------------ files


def test_write_all(tmp_path: Path) -> None:
    s = served("llama-server")
    folder = tmp_path / "clients"
    (folder).mkdir()
    (folder / "opencode.json").write_text("stale")
    paths = clients.write_all(s, folder)
    assert paths == {"opencode": folder / "opencode.json", "continue": folder / "continue-config.yaml",
                     "tabby": folder / "tabby-config.toml"}
    for kind, path in paths.items():
        assert path.read_text() == clients.render(kind, s)[1]
    assert sorted(p.name for p in folder.iterdir()) == ["continue-config.yaml", "opencode.json", "tabby-config.toml"]
    clients.write_all(s, folder, "rust")
    assert json.loads((folder / "opencode.json").read_text())["model"] == f"forge/{RS.tag}"
    before = {p.name: p.read_text() for p in folder.iterdir()}
    with pytest.raises(ValueError, match="deployed languages"):
        clients.write_all(s, folder, "cobol")
    assert {p.name: p.read_text() for p in folder.iterdir()} == before  # nothing written, no temporary files left


# ------------------------------------------------------------------------------------------------ real clients


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _unavailable(f"{name} is not on PATH; the client configurations are validated by the clients' own npm packages")
    return path


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


def _installed_version(prefix: Path) -> str | None:
    try:
        return json.loads((prefix / "node_modules" / CONFIG_YAML_PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def config_yaml_prefix() -> Path:
    """An npm prefix holding @continuedev/config-yaml@CONFIG_YAML_VERSION (installed once, under a file lock)."""
    npm = _tool("npm")
    _tool("node")
    root = cache_root() / "npm"
    prefix = root / f"config-yaml-{CONFIG_YAML_VERSION}"
    with locked(root / f"config-yaml-{CONFIG_YAML_VERSION}.lock"):
        if _installed_version(prefix) == CONFIG_YAML_VERSION:
            return prefix
        staging = Path(tempfile.mkdtemp(prefix=f".config-yaml-{CONFIG_YAML_VERSION}-", dir=root))
        try:
            (staging / "package.json").write_text(json.dumps({"name": "forge-tests-config-yaml", "private": True}))
            try:
                proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--save-exact", "--ignore-scripts",
                                       "--prefix", str(staging), f"{CONFIG_YAML_PACKAGE}@{CONFIG_YAML_VERSION}"],
                                      capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                _unavailable(f"npm install {CONFIG_YAML_PACKAGE}@{CONFIG_YAML_VERSION} took more than 300 s")
            if proc.returncode != 0:
                _unavailable(f"npm install {CONFIG_YAML_PACKAGE}@{CONFIG_YAML_VERSION} failed:\n{proc.stderr[-2000:]}")
            assert _installed_version(staging) == CONFIG_YAML_VERSION
            if prefix.exists():
                shutil.rmtree(prefix)
            staging.rename(prefix)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return prefix


def continue_validate(prefix: Path, texts: dict[str, str], tmp_path: Path) -> dict[str, dict]:
    """Run continue_validate.mjs on each text; {name: {ok, errors, warnings, dropped}}."""
    files = []
    for name, text in texts.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(text)
    proc = subprocess.run([_tool("node"), str(VALIDATE_SCRIPT), str(prefix), *map(str, files)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert report["package"] == {"name": CONFIG_YAML_PACKAGE, "version": CONFIG_YAML_VERSION}
    by_file = {r["file"]: r for r in report["results"]}
    results = {name: by_file[str(f)] for name, f in zip(texts, files)}
    assert (proc.returncode == 0) == all(r["ok"] for r in results.values())
    return results


def test_continue_config_passes_continues_own_validator(config_yaml_prefix: Path, tmp_path: Path) -> None:
    texts = {f"{target}-{lang or 'default'}": clients.continue_config(served(target), lang)
             for target in clients.TARGETS for lang in (None, "typescript")}
    for name, result in continue_validate(config_yaml_prefix, texts, tmp_path).items():
        assert result["ok"], f"{name}: {result}"


def test_continue_validator_rejects_broken_configs(config_yaml_prefix: Path, tmp_path: Path) -> None:
    good = clients.continue_dict(served("llama-server"))

    def broken(change) -> str:
        cfg = json.loads(json.dumps(good))
        change(cfg)
        return yaml.safe_dump(cfg, sort_keys=False)

    texts = {
        "good": yaml.safe_dump(good, sort_keys=False),
        "bad-role": broken(lambda c: c["models"][0]["roles"].append("autocompletion")),
        "context-not-a-number": broken(lambda c: c["models"][0]["defaultCompletionOptions"].update(contextLength="32k")),
        "no-model-name": broken(lambda c: c["models"][-1].pop("model")),
        "no-version": broken(lambda c: c.pop("version")),
        "misspelled-key": broken(lambda c: c["models"][-1].update(promptTemplate=c["models"][-1].pop("promptTemplates"))),
        "too-little-input-context": broken(lambda c: c["models"][0]["defaultCompletionOptions"].update(maxTokens=32000)),
    }
    results = continue_validate(config_yaml_prefix, texts, tmp_path)
    assert results.pop("good")["ok"]
    for name, result in results.items():
        assert not result["ok"], f"{name} was accepted: {result}"
    assert "models.0" in " ".join(results["bad-role"]["errors"])
    assert results["context-not-a-number"]["errors"] and results["no-model-name"]["errors"]
    assert "version" in " ".join(results["no-version"]["errors"])
    assert results["misspelled-key"] == {**results["misspelled-key"], "errors": [], "dropped": ["models[3].promptTemplate"]}
    assert "contextLength" in " ".join(results["too-little-input-context"]["warnings"])  # Continue's own check


@pytest.fixture(scope="session")
def opencode_binary() -> Path:
    """The `opencode` binary of opencode-ai@OPENCODE_VERSION (the shared test helper installs it once)."""
    _tool("npm")
    from forge_assets_tests.test_deploy import opencode_client

    try:
        return opencode_client.install(OPENCODE_VERSION)
    except opencode_client.OpenCodeUnavailable as exc:
        _unavailable(str(exc))


def _opencode(binary: Path, project: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    from forge_assets_tests.test_deploy import opencode_client

    project.mkdir(parents=True, exist_ok=True)
    (project / "opencode.json").write_text(json.dumps(config, indent=2))
    env = opencode_client.isolated_env(project.parent / f"{project.name}-home")
    return subprocess.run([str(binary), *args], cwd=project, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _missing(written: Any, resolved: Any, path: str = "") -> list[str]:
    """Paths of `written` that `resolved` lacks or changed (OpenCode drops unknown keys without a word)."""
    if isinstance(written, dict):
        if not isinstance(resolved, dict):
            return [path or "."]
        return [p for k, v in written.items() for p in (_missing(v, resolved[k], f"{path}.{k}") if k in resolved else [f"{path}.{k}"])]
    return [] if written == resolved else [f"{path}: {written!r} became {resolved!r}"]


@pytest.mark.slow
def test_opencode_itself_accepts_the_config(opencode_binary: Path, tmp_path: Path) -> None:
    s = served("llama-server")
    cfg = clients.opencode_config(s, "rust")
    proc = _opencode(opencode_binary, tmp_path / "project", cfg, "debug", "config")
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert _missing(cfg, resolved) == []  # every key written is one OpenCode knows, with the value written

    proc = _opencode(opencode_binary, tmp_path / "project", cfg, "models", "forge")
    assert proc.returncode == 0, proc.stderr
    listed = set(proc.stdout.split())
    assert {f"forge/{m.tag}" for m in s.models} <= listed and cfg["model"] in listed

    # OpenCode's validation can fail: a wrong type is refused, naming the path.
    bad = json.loads(json.dumps(cfg))
    bad["provider"]["forge"]["models"][RS.tag]["limit"]["context"] = "16k"
    proc = _opencode(opencode_binary, tmp_path / "broken", bad, "debug", "config")
    assert proc.returncode != 0
    assert f"provider.forge.models.{RS.tag}.limit.context" in proc.stdout + proc.stderr
    # ... and a misspelled key is dropped, which _missing reports.
    typo = json.loads(json.dumps(cfg))
    typo["provider"]["forge"]["models"][RS.tag]["tool_calls"] = typo["provider"]["forge"]["models"][RS.tag].pop("tool_call")
    proc = _opencode(opencode_binary, tmp_path / "typo", typo, "debug", "config")
    assert proc.returncode == 0, proc.stderr
    assert _missing(typo, json.loads(proc.stdout)) == [f".provider.forge.models.{RS.tag}.tool_calls"]
