"""The real OpenCode client (opencode-ai from npm, pinned) against a served forge-tiny model, end to end:
OpenCode sends its real requests (system prompt, tool list, streaming) to the server through a recording
proxy, exits 0, records the answer in its own opencode.db, and Forge's session reading (what the
`session_logs` asset runs) reads and classifies that database.

The endpoint is forge-tiny deployed by Forge's own deploy path (`llama_server.deploy`: Forge's model server on
llama.cpp's engine behind the router, context 32,768 per slot, 4 slots) bound to 0.0.0.0, so it has a key, and four
OpenCode runs go at once, each with the `opencode.json` that `forge client-config opencode` prints (key included). Without npm (or when the npm install fails) the test skips, or fails when $CI is set.
Times (install, deploy, opencode run) are printed (`pytest -s`). `request_recorder.py` (a recording proxy) was used
to learn what OpenCode sends; its findings are below.

What OpenCode 1.18.33 needs from a server, seen with this harness: every chat request streams
(`stream: true`, `stream_options: {include_usage: true}`), and a stream must end with a
`finish_reason` (without one OpenCode takes the answer as unfinished and asks again, without end); an
HTTP 5xx is retried without end, with back-off; a 4xx ends the run with exit 1 (a context-overflow
message first triggers an attempt at compaction).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forge_assets.sessions import classifications, collect, load_sources
from forge_assets_tests.conftest import free_port
from forge_assets_tests.test_deploy import opencode_client

MODEL = "forge-python:test"
CONTEXT = 32768
OUTPUT = 256
# Names two Python files: the session's own text makes it a Python session whatever forge-tiny answers.
MESSAGE = "Add a function add(a, b) to calc/add.py and a test for it to tests/test_add.py."
RUN_TIMEOUT = 150  # s; a run takes about 30 s here (2 cores), most of it the server reading the prompt

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first run also npm-installs OpenCode (about 20 s)


@dataclass
class ServedEndpoint:
    """Forge's deployed endpoint serving MODEL, and the forge.yaml that `forge client-config` reads."""

    base_url: str  # ends in /v1
    model: str
    log: Path  # the model server's own log
    config: Path  # forge.yaml
    context: int = CONTEXT
    timings: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def http_errors(self) -> list[str]:
        """Requests the server refused or failed (it logs each with `refused` or `ERROR`)."""
        return [line for line in self.lines() if "forge-server: refused" in line or "forge-server: ERROR" in line]

    def chat_lines(self) -> list[str]:
        return [line for line in self.lines() if "forge-server: chat" in line]


@pytest.fixture(scope="module")
def opencode_binary() -> Path:
    start = time.monotonic()
    try:
        binary = opencode_client.install()
    except opencode_client.OpenCodeUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"OpenCode cannot be installed on CI: {exc}")
        pytest.skip(f"OpenCode cannot be installed here: {exc}")
    print(f"\n[opencode] install/check took {time.monotonic() - start:.1f} s: {binary}")
    return binary


def test_four_opencode_sessions_at_once_on_a_lan_bind_with_its_key(opencode_binary: Path, q8_gguf: Path, tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    """The real OpenCode client as an agent team: 4 real OpenCode runs at once against one endpoint bound beyond loopback (0.0.0.0, so it has a
    key), each from the `forge client-config opencode` file that carries the key; every run exits 0 and the server
    refused nothing. (The traffic stays on this machine: 0.0.0.0 is reached through the local stack.)"""
    import concurrent.futures
    from types import SimpleNamespace

    from forge_assets.chat import template_of
    from forge_assets.config import DeployConfig
    from forge_assets.deploy import llama_server, service
    from forge_assets_tests.conftest import write_config

    port = free_port()
    config_path = write_config(tmp_path, [], deploy={"port": port, "max_output": OUTPUT, "host": "0.0.0.0"})
    store = SimpleNamespace(root=tmp_path / "artifacts")
    d = DeployConfig(host="0.0.0.0", port=port, max_output=OUTPUT)
    state_dir = service.endpoint_dir(store)
    models = [{"id": MODEL, "language": "python", "gguf": str(q8_gguf), "lora": None, "chat_template": template_of(tiny_model)}]
    state = llama_server.deploy(None, MODEL, d.host, port, state_dir, n_ctx=CONTEXT, models=models,
                                options=service.server_options(store, d))
    endpoint = ServedEndpoint(state["endpoint"], MODEL, Path(state["log"]), config_path)
    try:
        env = {**os.environ, "FORGE_CONFIG": str(config_path)}
        printed = subprocess.run([sys.executable, "-m", "forge_assets.cli", "client-config", "opencode", "--language", "python"],
                                 capture_output=True, text=True, env=env, check=True).stdout
        config = json.loads(printed)
        key = (state_dir / service.API_KEY).read_text().strip()
        assert config["provider"]["forge"]["options"]["apiKey"] == key  # the key reaches the client's config

        def one(i: int):
            project = tmp_path / f"project-{i}"
            project.mkdir()
            subprocess.run(["git", "init", "-q", str(project)], check=True)
            return opencode_client.run(opencode_binary, project, config, MESSAGE, timeout=RUN_TIMEOUT * 2,
                                       run_dir=tmp_path / f"opencode-{i}", stop_when=lambda: bool(endpoint.http_errors()))

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        print(f"\n[opencode] 4 sessions at once: {time.monotonic() - t0:.1f} s; each "
              f"{', '.join(f'{r.seconds:.1f}' for r in results)} s")
        report = "\n".join(r.describe() for r in results) + "\n--- server log\n" + "\n".join(endpoint.lines()[-40:])
        assert endpoint.http_errors() == [], report
        assert [r.returncode for r in results] == [0, 0, 0, 0], report
        for r in results:
            built = [a for a in opencode_client.assistant_answers(r.db) if a["agent"] == "build"]
            assert built and built[-1]["completed"] and built[-1]["error"] is None, report
        chats = [line for line in endpoint.chat_lines() if "chat stream" in line]  # the deploy's own smoke chat is not streamed
        assert len(chats) >= 8, report  # the title request and the agent's, for each session
        # the agent's ~20k-token prompt (system prompt + 10 tool schemas in forge-tiny's small vocabulary) fitted each slot
        assert max(int(re.search(r": (\d+) prompt", line).group(1)) for line in chats) > 4000, report
    finally:
        llama_server.stop(state_dir)

    # Forge reads one session's opencode.db as the session_logs asset does, and classifies the session.
    result, project = results[0], (tmp_path / "project-0")
    answers = opencode_client.assistant_answers(result.db)
    built = [a for a in answers if a["agent"] == "build"]
    assert built and built[-1]["text"].strip(), answers
    assert built[-1]["finish"] in ("stop", "length"), built[-1]
    source = [{"opencode": str(result.db)}]
    loaded = load_sources(source, tmp_path)
    assert loaded.warnings == [] and len(loaded.sessions) == 1, loaded.warnings
    session = loaded.sessions[0]
    assert session.directory == str(project.resolve())
    assert [m.role for m in session.messages] == ["user", "assistant"]
    assert MESSAGE in session.messages[0].parts[0]["text"]  # `opencode run` stores it in double quotes
    assert session.messages[1].completed and session.messages[1].agent == "build"
    assert "python" in classifications(loaded)[session.id].languages
    records, stats, warnings = collect(source, tmp_path, "python")
    assert warnings == [] and stats["sessions"] == 1, stats
    assert len(records) == 1 and records[0]["session"] == session.id
    roles = [m["role"] for m in records[0]["messages"]]
    assert roles == ["user", "assistant"] and "calc/add.py" in records[0]["messages"][0]["content"]
