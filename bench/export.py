"""Benchmark: Hugging Face safetensors -> GGUF conversion + Q8_0 quantization, Forge's converter against llama.cpp's
own `convert_hf_to_gguf.py`, on the same >= 1 B-parameter checkpoint, for time and peak memory.

    python bench/export.py [--layers 24] [--repeats 3]

The model: a random-initialised Qwen2 (hidden 2048, intermediate 5632, 24 layers, 16 heads, 2 KV heads, tied
embeddings: 1.06 B parameters) with forge-tiny's tokenizer (trained on this repository's own Python source, as
`forge_assets.training.base_model` trains it; vocab rounded up to a multiple of 64), initialised directly in bfloat16
and saved with `save_pretrained(max_shard_size="500MB")`, so it is bf16 and sharded like a real checkpoint (about
2.1 GB in 5 shards). Building it takes about 35 s on 2 cores (2.1 GB of bf16 weights in memory); it is cached in
~/.cache/forge-bench/export-model-<key> (key: hash of the shape and the tokenizer files; other export-model-* folders
are removed when a new one is built), so reruns skip it. The tokenizer, and so the key, follows this repository's
source: a changed forge_assets/*.py means a rebuild.

llama.cpp's converter is the one in the llama-cpp-python source distribution matching the installed
`llama_cpp.__version__` (vendor/llama.cpp: convert_hf_to_gguf.py, its `conversion` package and its bundled gguf-py,
which it puts ahead of the installed gguf on sys.path itself, NO_LOCAL_GGUF being unset). It is found in this
order: $FORGE_LLAMA_CPP_SRC (a llama.cpp source folder); ~/.cache/forge-bench/llama.cpp-<version>/; a
llama_cpp_python-<version>.tar.gz under /tmp/pip-unpack-*/ or ~/.cache; else `pip download --no-binary :all:` from
PyPI (the only network use). Only those files are extracted to the cache; nothing of llama.cpp is copied into this
repository. Its BPE pre-tokenizer check refuses tokenizers it does not know by hash (forge-tiny's among them), so it
is run through a small runner that imports the script as a module, replaces `conversion.base.TextModel.
get_vocab_base_pre` with one returning "qwen2" (forge-tiny splits text with Qwen2's regex, which is what Forge writes
too) and calls its main() with [model, --outfile, X, --outtype, f16].

Both sides write F16 (llama.cpp's `--outtype f16`; `convert_hf_to_gguf(..., outtype="F16")` for Forge), and both
quantize that file to Q8_0 with the same function, `forge_assets.export.gguf_export.quantize` (llama.cpp's C API
`llama_model_quantize` through llama-cpp-python; the llama-quantize executable is not in the wheel), so the
quantizer is identical and the difference is the converter.

Method: the shards are read once first so both sides start with them in the page cache, and dirty pages are
synced before every run. Each side runs in its own fresh Python subprocess (this file with --child), convert then
quantize in that process, each stage timed, with two peak-memory figures per stage and overall:
- peak RSS: VmHWM from /proc/self/status (reset between stages by writing 5 to /proc/self/clear_refs), with the
  parent's 20 ms sampling of VmRSS. It counts the file-backed pages of any file the process mmaps (safetensors'
  safe_open maps its shards), so it can overstate what the process needs. getrusage's ru_maxrss is not used: Linux
  carries the pre-exec size (a fork of the parent) over into the child's ru_maxrss;
- peak anonymous memory: RssAnon, sampled every 20 ms both by a thread in the child (per stage) and by the parent
  reading /proc/<pid>/status (not held up by the child's GIL): the memory the process really needs, which cannot
  be given back to the page cache.
Runs alternate llama.cpp, Forge, llama.cpp, ... (--repeats 3, the default); times are each side's best run
(all totals are listed too: 2-core timings vary by 1.5-2x from run to run), memory the largest over runs. The
intermediate F16 GGUF (the peak temporary disk besides the output) and the Q8_0 are measured and deleted after each
run; the last run's Q8_0 files are kept to check that both load in llama.cpp (full load, n_ctx 64, tokenize) and
agree (same tensor names, types and shapes; how many tensors are byte-identical), then deleted.

Prints one JSON line: parameters, model and largest-shard bytes, outtype, quantization, for "forge" and "llama_cpp"
convert_s, quantize_s, total_s, peak_rss_mb, peak_anon_mb (and per stage), intermediate_bytes, output_bytes; ratios
forge / llama.cpp for time (target <= 1.2), peak RSS and peak anonymous memory (targets <= 1.0), and Forge's peak
anonymous memory over the largest shard. MB is 2^20 bytes. Everything else goes to stderr; the temporary folder is
removed however it ends. About 3-4 minutes on 2 cores once the model is cached.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import stdout_to_stderr  # noqa: E402 (bench/ is on sys.path when run as a script)

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 2048, 5632, 24, 16, 2
OUTTYPE, QUANT, SHARD = "F16", "Q8_0", "500MB"
CACHE = Path.home() / ".cache" / "forge-bench"
MB = 1 << 20




def _mb(n: float) -> float:
    return round(n / MB, 1)


def _log(msg: str) -> None:
    print(f"[bench/export] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------- model


def _tokenizer_files(dest: Path) -> None:
    """forge-tiny's tokenizer (trained on this repository's Python source, as bench/serving.py trains it) in dest."""
    from forge_assets.chat import CHAT_TEMPLATE
    from forge_assets.config import TinyModelConfig
    from forge_assets.training.base_model import train_tokenizer

    texts = sorted(p.read_text(encoding="utf-8") for p in (ROOT / "forge_assets").rglob("*.py"))
    train_tokenizer(texts + [CHAT_TEMPLATE], TinyModelConfig().vocab_size).save_pretrained(dest)


def model_folder(layers: int, scratch: Path) -> tuple[Path, dict]:
    """The cached bf16 sharded Qwen2 checkpoint for this shape and tokenizer, built first when missing."""
    tok_dir = scratch / "tokenizer"
    _tokenizer_files(tok_dir)
    shape = {"hidden": HIDDEN, "intermediate": INTERMEDIATE, "layers": layers, "heads": HEADS, "kv_heads": KV_HEADS,
             "dtype": "bfloat16", "shard": SHARD, "tied": True}
    h = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    for f in sorted(tok_dir.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    folder = CACHE / f"export-model-{h.hexdigest()[:16]}"
    info_file = folder / "bench-model.json"
    if info_file.is_file():
        _log(f"model cached in {folder}")
        return folder, json.loads(info_file.read_text())

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from forge_assets.chat import FIM_PAD, IM_END

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    vocab = -(-len(tokenizer) // 64) * 64
    config = AutoConfig.for_model(
        "qwen2", vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(FIM_PAD), use_sliding_window=False,
    )
    _log(f"building a random Qwen2 ({layers} layers, vocab {vocab}) in bfloat16 ...")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("export-model-*"):
        shutil.rmtree(old, ignore_errors=True)  # an older shape or tokenizer: ~2 GB each
    part = CACHE / f"{folder.name}.part-{os.getpid()}"
    try:
        model.save_pretrained(part, max_shard_size=SHARD, safe_serialization=True)
        tokenizer.save_pretrained(part)
        del model
        info = {"parameters": params, "vocab_size": vocab, "tokenizer_size": len(tokenizer), "shape": shape,
                "build_seconds": round(time.perf_counter() - started, 1)}
        (part / "bench-model.json").write_text(json.dumps(info, indent=1))
        part.rename(folder)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    _log(f"built {params / 1e9:.3f} B parameters in {info['build_seconds']} s: {folder}")
    return folder, info


# ------------------------------------------------------------------------------------------------ llama.cpp source


def _wanted(rel: str) -> bool:
    """What llama.cpp's converter needs of vendor/llama.cpp: the script, its `conversion` package, gguf-py."""
    return rel == "convert_hf_to_gguf.py" or rel.startswith(("conversion/", "gguf-py/"))


def llama_cpp_source(version: str) -> Path:
    """A llama.cpp source folder holding convert_hf_to_gguf.py for llama-cpp-python `version`."""
    env = os.environ.get("FORGE_LLAMA_CPP_SRC")
    if env:
        if not (Path(env) / "convert_hf_to_gguf.py").is_file():
            raise SystemExit(f"FORGE_LLAMA_CPP_SRC={env} has no convert_hf_to_gguf.py")
        return Path(env)
    dest = CACHE / f"llama.cpp-{version}"
    if (dest / ".complete").is_file():
        return dest
    name = f"llama_cpp_python-{version}.tar.gz"
    candidates = [p for d in sorted(Path("/tmp").glob("pip-unpack-*")) for p in [d / name] if p.is_file()]
    cache_root = Path.home() / ".cache"
    if not candidates and cache_root.is_dir():
        candidates = [Path(d) / name for d, _, files in os.walk(cache_root) if name in files]
    if not candidates:
        sdists = CACHE / "sdist"
        sdists.mkdir(parents=True, exist_ok=True)
        _log(f"downloading the llama-cpp-python {version} source distribution from PyPI ...")
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
                        "--no-binary", ":all:", "-d", str(sdists)], check=True, stdout=sys.stderr)
        candidates = [sdists / name]
    tarball = candidates[0]
    _log(f"extracting llama.cpp's converter from {tarball}")
    part = CACHE / f"{dest.name}.part-{os.getpid()}"
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    try:
        with tarfile.open(tarball) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and (m.isfile() or m.isdir()) and _wanted(m.name[len(prefix):]):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            if not any(m.name == "convert_hf_to_gguf.py" for m in members):
                raise SystemExit(f"{tarball}: no vendor/llama.cpp/convert_hf_to_gguf.py")
            tar.extractall(part, members=members, filter="data")
        (part / ".complete").write_text(str(tarball))
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------------------------- child


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) * 1024
    return out


class _Sampler(threading.Thread):
    """Peak RssAnon (and RSS) of this process per stage, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stage = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self._done = threading.Event()

    def sample(self) -> None:
        s = _status()
        peak = self.peaks.setdefault(self.stage, {"anon": 0, "rss": 0})
        peak["anon"] = max(peak["anon"], s["RssAnon"])
        peak["rss"] = max(peak["rss"], s["VmRSS"])

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.sample()

    def finish(self) -> None:
        self._done.set()
        self.join()


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _convert_llama_cpp(src: Path, model: Path, out: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py main(), its BPE pre-tokenizer check answered with Qwen2's."""
    import importlib.util

    sys.path.insert(0, str(src))  # its `conversion` package; the script puts its gguf-py at sys.path[1] itself
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", src / "convert_hf_to_gguf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    import gguf
    from conversion import base

    if not Path(gguf.__file__).resolve().is_relative_to((src / "gguf-py").resolve()):
        raise SystemExit(f"llama.cpp's converter imported gguf from {gguf.__file__}, not its bundled gguf-py")
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    sys.argv = ["convert_hf_to_gguf.py", str(model), "--outfile", str(out), "--outtype", OUTTYPE.lower()]
    script.main()


def _convert_forge(model: Path, out: Path) -> None:
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf

    convert_hf_to_gguf(model, out, OUTTYPE)


def child(side: str, model: Path, work: Path, result: Path, src: Path | None) -> int:
    """One side, convert then quantize, in this fresh process; figures written to `result` as JSON."""
    sampler = _Sampler()
    sampler.sample()
    sampler.start()
    intermediate, output = work / f"{side}-{OUTTYPE}.gguf", work / f"{side}-{QUANT}.gguf"
    figures: dict = {}
    hwm_reset = _reset_hwm()

    sampler.stage = "convert"
    t0 = time.perf_counter()
    if side == "llama_cpp":
        _convert_llama_cpp(src, model, intermediate)
    else:
        _convert_forge(model, intermediate)
    figures["convert_s"] = time.perf_counter() - t0
    sampler.sample()
    figures["convert_hwm"] = _status()["VmHWM"]

    from forge_assets.export.gguf_export import quantize

    hwm_reset = _reset_hwm() and hwm_reset
    sampler.stage = "quantize"
    t0 = time.perf_counter()
    quantize(intermediate, output, QUANT)
    figures["quantize_s"] = time.perf_counter() - t0
    sampler.sample()
    figures["quantize_hwm"] = _status()["VmHWM"]
    sampler.finish()

    figures.update(
        peaks=sampler.peaks, hwm_reset=hwm_reset,
        intermediate_bytes=intermediate.stat().st_size, output_bytes=output.stat().st_size,
    )
    result.write_text(json.dumps(figures))
    return 0


# --------------------------------------------------------------------------------------------------------- parent


def _poll(proc: subprocess.Popen, polled: dict) -> None:
    """Peak RssAnon and VmRSS of a running child, read from /proc/<pid>/status every 20 ms until it exits."""
    while proc.poll() is None:
        time.sleep(0.02)
        with contextlib.suppress(OSError, ValueError, IndexError):
            if b"--child" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                continue  # not yet exec'd: a vfork of this process, its memory is ours
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith(("RssAnon:", "VmRSS:")):
                    key = "anon" if line.startswith("RssAnon") else "rss"
                    polled[key] = max(polled[key], int(line.split()[1]) * 1024)


def run_side(side: str, model: Path, work: Path, src: Path) -> dict:
    """One side in a fresh subprocess; its intermediate GGUF is deleted, the Q8_0 kept (the caller deletes it)."""
    result = work / f"{side}-result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, str(model), str(work), str(result), str(src)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("NO_LOCAL_GGUF", None)
    os.sync()  # the previous run's GGUFs written back now, not during this run
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr, env=env, cwd=str(ROOT))
    polled = {"anon": 0, "rss": 0}  # the parent's own 20 ms sampling of the child: blind to the child's GIL
    try:
        _poll(proc, polled)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    wall = time.perf_counter() - started
    (work / f"{side}-{OUTTYPE}.gguf").unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side}: the child process failed (exit {proc.returncode}); see stderr above")
    f = json.loads(result.read_text())
    result.unlink()
    conv, quant = f["peaks"].get("convert", {}), f["peaks"].get("quantize", {})
    rss_c = max(f["convert_hwm"], conv.get("rss", 0))
    rss_q = max(f["quantize_hwm"], quant.get("rss", 0))
    fig = {
        "convert_s": f["convert_s"], "quantize_s": f["quantize_s"], "total_s": f["convert_s"] + f["quantize_s"],
        "peak_rss": max(rss_c, rss_q, polled["rss"]), "peak_anon": max(polled["anon"], *(p["anon"] for p in f["peaks"].values())),
        "convert_peak_rss": rss_c, "convert_peak_anon": conv.get("anon", 0),
        "quantize_peak_rss": rss_q, "quantize_peak_anon": quant.get("anon", 0),
        "intermediate_bytes": f["intermediate_bytes"], "output_bytes": f["output_bytes"], "process_s": wall,
    }
    _log(f"{side}: convert {fig['convert_s']:.1f} s, quantize {fig['quantize_s']:.1f} s, peak RSS {_mb(fig['peak_rss'])} MB, "
         f"peak anon {_mb(fig['peak_anon'])} MB")
    return fig


def _tensors(path: Path) -> dict:
    import gguf

    return {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), t.data) for t in gguf.GGUFReader(str(path)).tensors}


def check_outputs(forge: Path, llama: Path) -> dict:
    """Both Q8_0 files load in llama.cpp; their tensor names, types and shapes agree; how many are byte-identical."""
    import numpy as np

    from forge_assets.export.gguf_export import load_llama

    loads = {}
    for side, path in (("forge", forge), ("llama_cpp", llama)):
        try:
            with stdout_to_stderr():
                llm = load_llama(path, n_ctx=64)
                loads[side] = len(llm.tokenize(b"def main():\n    return 0\n", add_bos=False)) > 0
                del llm
        except Exception as e:  # noqa: BLE001 - reported, not raised
            _log(f"{side}: llama.cpp could not load {path.name}: {e}")
            loads[side] = False
    a, b = _tensors(forge), _tensors(llama)
    meta_a = {k: v[:2] for k, v in a.items()}
    meta_b = {k: v[:2] for k, v in b.items()}
    differ = sorted(k for k in set(meta_a) | set(meta_b) if meta_a.get(k) != meta_b.get(k))
    identical = sum(1 for k in set(a) & set(b) if a[k][:2] == b[k][:2] and np.array_equal(a[k][2], b[k][2]))
    return {"loads_in_llama_cpp": loads, "outputs_agree": not differ, "tensors": {"forge": len(a), "llama_cpp": len(b)},
            "differing_tensors": differ[:10], "byte_identical_tensors": identical}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        side, model, work, result, src = argv[1:6]
        return child(side, Path(model), Path(work), Path(result), Path(src))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=LAYERS, help=f"decoder layers (default {LAYERS}: 1.06 B parameters)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating (default 3)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import llama_cpp

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forge-bench-export-") as tmp:
        tmp = Path(tmp)
        with stdout_to_stderr():
            src = llama_cpp_source(llama_cpp.__version__)
            model, info = model_folder(args.layers, tmp)
        shards = sorted(model.glob("*.safetensors"))
        for shard in shards:  # page cache warm for both sides alike
            with shard.open("rb") as fh:
                while fh.read(16 * MB):
                    pass
        runs: dict[str, list[dict]] = {"llama_cpp": [], "forge": []}
        for rep in range(args.repeats):
            for side in ("llama_cpp", "forge"):
                _log(f"run {rep + 1}/{args.repeats}: {side}")
                runs[side].append(run_side(side, model, tmp, src))
                if rep + 1 < args.repeats:
                    (tmp / f"{side}-{QUANT}.gguf").unlink()
        check = check_outputs(tmp / f"forge-{QUANT}.gguf", tmp / f"llama_cpp-{QUANT}.gguf")

    def summary(side: str) -> dict:
        best = min(runs[side], key=lambda r: r["total_s"])
        mem = {k: max(r[k] for r in runs[side]) for k in ("peak_rss", "peak_anon", "convert_peak_rss", "convert_peak_anon",
                                                          "quantize_peak_rss", "quantize_peak_anon")}
        return {
            "convert_s": round(best["convert_s"], 1), "quantize_s": round(best["quantize_s"], 1), "total_s": round(best["total_s"], 1),
            "all_total_s": [round(r["total_s"], 1) for r in runs[side]],
            **{f"{k}_mb": _mb(v) for k, v in mem.items()},
            "intermediate_bytes": best["intermediate_bytes"], "output_bytes": best["output_bytes"],
        }

    forge, llama = summary("forge"), summary("llama_cpp")
    largest = max(s.stat().st_size for s in shards)
    print(json.dumps({
        "bench": "export", "parameters": info["parameters"], "vocab_size": info["vocab_size"], "shape": info["shape"],
        "model_bytes": sum(s.stat().st_size for s in shards), "shards": len(shards), "largest_shard_bytes": largest,
        "outtype": OUTTYPE, "quantization": QUANT, "llama_cpp_python": llama_cpp.__version__, "repeats": args.repeats,
        "forge": forge, "llama_cpp": llama,
        "time_ratio": round(forge["total_s"] / llama["total_s"], 2),
        "convert_time_ratio": round(forge["convert_s"] / llama["convert_s"], 2),
        "peak_rss_ratio": round(forge["peak_rss_mb"] / llama["peak_rss_mb"], 2),
        "peak_anon_ratio": round(forge["peak_anon_mb"] / llama["peak_anon_mb"], 2),
        "forge_peak_anon_over_largest_shard": round(forge["peak_anon_mb"] / _mb(largest), 2),
        "targets": {"time_ratio": 1.2, "peak_rss_ratio": 1.0, "peak_anon_ratio": 1.0},
        **check,
        "model_build_seconds": info["build_seconds"], "seconds": round(time.perf_counter() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
