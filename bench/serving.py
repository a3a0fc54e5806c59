"""Benchmark: serving memory of Forge's one server (base GGUF once + a LoRA GGUF per language) against one merged
GGUF server per language (the old way, and `deploy.merge: true`), for 1 and 3 languages.

    python bench/serving.py

Builds, in a temporary folder and offline, a random-initialised Qwen2 model big enough that its weights dominate
(hidden 1024, 8 layers, intermediate 2816; forge-tiny's tokenizer trained on this repository's own Python source,
as `forge_assets.training.base_model` trains it) and 3 PEFT LoRA adapters (rank 16, `TARGET_MODULES`, random
non-zero A and B), then serves them both ways with `llama_server.start` at the same small context (n_ctx 4096, so
the KV cache does not dominate):

- forge: the base as one Q8_0 GGUF and each adapter as an F16 LoRA GGUF (`convert_lora_to_gguf`), all in ONE
  Forge model server (one `models` entry per language: same gguf, its own lora); measured with 1 entry and with 3;
- baseline: each adapter merged into the base (`merge_adapter`), converted and quantized to its own Q8_0 GGUF, one
  server per language; the sum over 1 and over 3 servers.

Memory is read with psutil after one warm-up chat request to every tag (so every weight page has been touched).
The headline figure is RSS: llama.cpp mmaps the GGUF, and RSS counts the mapped file pages a process holds
resident, which is the memory serving really takes; the merged servers each map a different file, so nothing of
their weights is shared. PSS (shared pages split between the processes that map them: libpython, libllama …) and
USS (pages only that process maps; a GGUF mapped by one server counts here) are reported too, with the file-backed
and anonymous parts of RSS (/proc/<pid>/status RssFile, RssAnon).

Prints one JSON line: parameters, file sizes, memory for each setup in MB (2^20 bytes), and ratio_3_lang =
merged_3_lang / forge_3_lang (RSS). Every server it starts is stopped, and every file removed, however it ends.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import stdout_to_stderr  # noqa: E402 (bench/ is on sys.path when run as a script)

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
    """PEFT LoRA adapters on `base` (rank RANK, TARGET_MODULES), each with its own random non-zero A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forge_assets.training.peft_backend import TARGET_MODULES

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGET_MODULES,
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    server = llama_server.start(None, tag, "127.0.0.1", _free_port(), logs / f"{tag.replace(':', '-')}.log", n_ctx=N_CTX,
                                timeout=300.0, models=models)
    running.append(server)
    for m in models:
        llama_server.smoke_chat(server["endpoint"], m["id"], max_tokens=8)
    return server


def main() -> int:
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
        "bench": "serving", "model_params": model["parameters"], "vocab_size": model["vocab_size"],
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
        **detail,
        "build_seconds": round(built, 1), "seconds": round(time.perf_counter() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
