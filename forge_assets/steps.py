"""Forge's heavy steps, run in their own process: `python -m forge_assets.steps`.

Training, merging, GGUF conversion, quantization and llama.cpp loading and generation run native
code (torch, llama.cpp) that can crash the process or be killed for memory. Each asset launches
this module through Dagster Pipes (a local subprocess by default, a Kubernetes pod with
`FORGE_DEPLOYMENT=k8s`), so such a crash fails one step and never the orchestrator.

The Pipes extras say which step to run and its arguments (all JSON: paths and config dicts):
    {"step": "train_adapter", "args": {...}, "result_path": "<file the result is written to>"}
Logs stream back through Pipes. The result file holds {"phase": ...} while the step runs,
then {"result": {...}} or {"error": {"type": ..., "message": ...}}. It lives under the artifact
root, so it is shared with the orchestrator on Kubernetes too (a volume mounted at the same path).

Dagster-free on purpose: it imports `dagster_pipes` and Forge's plain modules only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from forge_assets.files import atomic_write_json

FAULT_ENV = "FORGE_FAULT_INJECT"  # "<step>[:<phase>][@<language>]": crash there with a real segfault (tests, drills)
ERROR_EXIT = 3  # a Python error the step reported (its message is in the result file)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=None)


def _maybe_crash(step: str, phase: str, language: str) -> None:
    """The fault drill: FORGE_FAULT_INJECT=<step>[:<phase>][@<language>] dereferences a null pointer there."""
    want = os.environ.get(FAULT_ENV, "")
    if not want:
        return
    want, _, w_lang = want.partition("@")
    w_step, _, w_phase = want.partition(":")
    if w_step == step and (not w_phase or w_phase == phase) and (not w_lang or w_lang == language):
        import ctypes

        ctypes.string_at(0)  # SIGSEGV, exactly like a crash inside llama.cpp or torch


# -- the steps: plain functions of JSON arguments -------------------------------------------------------


def step_build_tiny_model(args: dict, log: Callable[[str], None], phase: Callable[[str], None]) -> dict:
    from forge_assets.config import TinyModelConfig
    from forge_assets.training.base_model import build_tiny_model

    texts = [json.loads(line)["text"] for line in Path(args["corpus"]).read_text(encoding="utf-8").splitlines() if line]
    phase("pretrain")
    return build_tiny_model(texts, Path(args["out"]), TinyModelConfig(**args["tiny_model"]), log=log)


def step_train_adapter(args: dict, log: Callable[[str], None], phase: Callable[[str], None]) -> dict:
    from forge_assets.config import TrainingConfig
    from forge_assets.training.adapter import train_adapter

    phase("train")
    opt = {k: Path(args[k]) if args.get(k) else None for k in ("checkpoints", "parent", "parent_dataset")}
    return train_adapter(Path(args["base"]), Path(args["dataset"]), Path(args["out"]), TrainingConfig(**args["training"]), log=log, **opt)


def step_evaluate(args: dict, log: Callable[[str], None], phase: Callable[[str], None]) -> dict:
    from forge_assets.evaluation.scores import evaluate

    phase("score")
    return evaluate(Path(args["base"]), Path(args["adapter"]), Path(args["dataset"]), int(args["seq_len"]), args.get("eval"),
                    args.get("language", ""), log=log, champion=Path(args["champion"]) if args.get("champion") else None)


def step_export_gguf(args: dict, log: Callable[[str], None], phase: Callable[[str], None]) -> dict:
    from forge_assets.evaluation.scores import held_out_texts
    from forge_assets.export.pipeline import export_gguf

    from forge_assets.chat import template_of

    from forge_assets.fim_tokens import scheme_of_folder

    held_out = (held_out_texts(Path(args["dataset"]), template=template_of(Path(args["base"])), fim=scheme_of_folder(Path(args["base"])))
                if args.get("dataset") else None)
    return export_gguf(Path(args["base"]), Path(args["adapter"]), Path(args["out"]), Path(args["work"]), args["quantization"],
                       args["name"], phase=phase, held_out=held_out, extra_quantizations=args.get("extra_quantizations", []),
                       windows=int(args.get("windows", 24)), window_tokens=int(args.get("window_tokens", 512)), log=log,
                       merge=bool(args.get("merge", True)), base_folder=Path(args["base_folder"]) if args.get("base_folder") else None,
                       intermediate=args.get("intermediate", "auto"))


STEPS: dict[str, Callable[[dict, Callable[[str], None], Callable[[str], None]], dict]] = {
    "build_tiny_model": step_build_tiny_model,
    "train_adapter": step_train_adapter,
    "evaluate": step_evaluate,
    "export_gguf": step_export_gguf,
}

# What each phase runs, for the crash message the orchestrator shows.
NATIVE = {"pretrain": "torch", "train": "torch", "score": "torch", "merge": "torch", "convert": "gguf-py",
          "quantize": "llama.cpp", "smoke_generate": "llama.cpp", "score_gguf": "llama.cpp",
          "convert_base": "gguf-py", "quantize_base": "llama.cpp", "convert_lora": "gguf-py"}


def run(step: str, args: dict, result_path: Path, log: Callable[[str], None], language: str = "") -> int:
    """Run one step; write its result or error to result_path; return the process exit code."""
    if step not in STEPS:
        _write_json(result_path, {"error": {"type": "UnknownStep", "message": f"unknown Forge step `{step}`; known: {', '.join(STEPS)}."}})
        return ERROR_EXIT
    started = time.time()

    def phase(name: str) -> None:
        _write_json(result_path, {"phase": name, "pid": os.getpid()})
        log(f"{step}: {name}")
        _maybe_crash(step, name, language)

    phase("start")
    try:
        result = STEPS[step](args, log, phase)
    except Exception as exc:  # noqa: BLE001 - every error goes back to the orchestrator, message first
        traceback.print_exc(file=sys.stderr)  # the stack stays in the step's log
        _write_json(result_path, {"error": {"type": type(exc).__name__, "message": str(exc)}})
        return ERROR_EXIT
    _write_json(result_path, {"result": result, "seconds": round(time.time() - started, 3)})
    return 0


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        result_path = Path(extras["result_path"])
        code = run(extras["step"], extras.get("args", {}), result_path, pipes.log.info, extras.get("language", ""))
        if code == 0:  # the result goes back through Pipes too (the file stays for crashes, where Pipes messages end early)
            pipes.report_custom_message(json.loads(result_path.read_text()))
    return code


if __name__ == "__main__":
    sys.exit(main())
