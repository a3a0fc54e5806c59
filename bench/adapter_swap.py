"""Benchmark: adding a language's adapter to a served >= 1 B-parameter base, without reloading the base.

    python bench/adapter_swap.py

The model is bench/export.py's random-initialised 1.06 B-parameter Qwen2 (bf16, cached in ~/.cache/forge-bench), as a
Q8_0 GGUF (~1.1 GB), with two random rank-16 PEFT adapters (`python`, `go`) as F16 LoRA GGUFs. Steps:

1. `python` is deployed (router + Forge's server on llama.cpp's engine), as `forge run` deploys it;
2. **swap**: `go` is added by the real deploy path. Blue-green starts a new server that maps the SAME base file
   (mmap, page cache warm since the old server maps it), loads both LoRA GGUFs, is smoke-tested, takes the route,
   and the old one is stopped;
3. **reload** (the alternative, what a restart that reloads the base costs): everything is stopped, the base file's
   pages are dropped from the page cache (posix_fadvise DONTNEED), and the same two-language deploy starts cold.

For each: the deploy's wall time, the new server's own "engine up" time (from its log), and how many bytes the new
server process read from storage (/proc/<pid>/io read_bytes: ~0 when it reuses the mapped base). Prints one JSON line;
`ratio` = reload seconds / swap seconds. Every server is stopped and every file removed, however it ends.
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

LAYERS = 24
N_CTX = 2048


def _read_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def _engine_up(log: Path, offset: int) -> float | None:
    with open(log, "rb") as fh:
        fh.seek(offset)
        found = re.findall(r"up in ([0-9.]+)s", fh.read().decode(errors="replace"))
    return float(found[-1]) if found else None


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from export import model_folder  # noqa: E402 (bench/export.py: the cached 1 B checkpoint)
    from serving import build_adapters, gguf_q8  # noqa: E402

    from forge_assets.deploy import llama_server
    from forge_assets.export.lora_gguf import convert_lora_to_gguf

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forge-bench-swap-") as tmp:
        tmp = Path(tmp)
        state_dir = tmp / "endpoint"
        try:
            with stdout_to_stderr():
                hf, info = model_folder(LAYERS, tmp)
                base = tmp / "base-Q8_0.gguf"
                gguf_q8(hf, base)
                base_mb = round(base.stat().st_size / 2**20, 1)
                adapters = [tmp / "adapter-python", tmp / "adapter-go"]
                build_adapters(hf, adapters)
                loras = []
                for name, adapter in zip(("python", "go"), adapters):
                    loras.append(tmp / f"lora-{name}-F16.gguf")
                    convert_lora_to_gguf(adapter, hf, loras[-1], "F16")
                built = time.perf_counter() - started
                entries = [{"id": f"forge-{name}:bench", "language": name, "gguf": str(base), "lora": str(lora), "chat_template": None}
                           for name, lora in zip(("python", "go"), loras)]
                from forge_assets.files import free_port

                port = free_port()

                def deploy(models: list[dict]) -> dict:
                    log = state_dir / "server.log"
                    offset = log.stat().st_size if log.exists() else 0
                    t0 = time.perf_counter()
                    state = llama_server.deploy(None, models[-1]["id"], "127.0.0.1", port, state_dir, n_ctx=N_CTX, models=models,
                                                options={"parallel": 1}, start_timeout=600)
                    seconds = time.perf_counter() - t0
                    return {"seconds": round(seconds, 2), "engine_up_s": _engine_up(log, offset), **state["timings"],
                            "server_read_mb": round(_read_bytes(state["pid"]) / 2**20, 1), "pid": state["pid"]}

                first = deploy(entries[:1])
                swap = deploy(entries)  # adds go: a new server maps the same base
                llama_server.stop(state_dir)
                _drop_cache(base)
                reload = deploy(entries)  # the same two languages, the base read from storage again
        finally:
            llama_server.stop(state_dir)
    print(json.dumps({
        "bench": "adapter_swap", "model_params": info["parameters"], "base_gguf_mb": base_mb, "lora_rank": 16, "n_ctx": N_CTX,
        "first_deploy": {k: v for k, v in first.items() if k != "pid"},
        "swap": {k: v for k, v in swap.items() if k != "pid"},
        "reload": {k: v for k, v in reload.items() if k != "pid"},
        "ratio": round(reload["seconds"] / swap["seconds"], 2),
        "build_seconds": round(built, 1), "seconds": round(time.perf_counter() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
