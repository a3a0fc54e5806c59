"""Heavy steps out of the orchestrator's process, through Dagster Pipes.

`run_step` launches `python -m forge_assets.steps` with PipesSubprocessClient (default) or
dagster-k8s's PipesK8sClient (`ForgeResource(step_runner="k8s")`, set by `FORGE_DEPLOYMENT=k8s`),
streams its logs into the run, and turns a crash into a dagster Failure that names the step, the
phase, the exit signal and the fix. The orchestrator process never loads torch or llama.cpp for
these steps, so a segfault or an out-of-memory kill fails one step of one language only.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import uuid
from pathlib import Path

from dagster import AssetExecutionContext, Failure, PipesSubprocessClient

from forge_assets.steps import ERROR_EXIT, NATIVE

STEP_COMMAND = [sys.executable, "-m", "forge_assets.steps"]
LLAMA_FIX = ("Fix: llama.cpp was probably built for another CPU or with unsafe native flags; reinstall it portably with "
             "`CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36`, then rematerialize.")
TORCH_FIX = ("Fix: see the step's stderr in the run log; lower training.batch_size or training.seq_len, or use a smaller base model; "
             "rematerialize to retry.")
OOM_FIX = ("Fix: give the step more memory (on Kubernetes raise the pod's memory limit), or lower training.batch_size / "
           "training.seq_len, or use a smaller base model or quantization.")


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def crash_message(step: str, language: str, phase: str | None, code: int | None) -> tuple[str, str]:
    """(what happened, the fix) for a step process that exited without reporting a result."""
    where = f"step `{step}` for `{language}`" + (f", phase `{phase}` ({NATIVE.get(phase, 'Python')})" if phase else "")
    if code is not None and code < 0:
        name = _signal_name(code)
        if name == "SIGKILL":
            return f"{where} was killed by SIGKILL, most often the kernel's out-of-memory killer.", OOM_FIX
        if name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGABRT", "SIGFPE"):
            fix = LLAMA_FIX if NATIVE.get(phase or "") == "llama.cpp" else TORCH_FIX
            return f"{where} crashed with {name} in native code.", fix
        if name in ("SIGINT", "SIGTERM"):
            return f"{where} was stopped by {name} (interrupted).", "Fix: rematerialize when ready."
        return f"{where} was ended by {name}.", TORCH_FIX
    return f"{where} exited with code {code} without a result.", TORCH_FIX


def run_step(context: AssetExecutionContext, forge, step: str, args: dict, work: Path) -> dict:
    """Run a Forge step in its own process (or pod) through Pipes and return its result dict.

    work: a scratch folder the step's process can see (under the artifact root), for the result file.
    """
    language = context.partition_key if context.has_partition_key else "all"
    result_path = work / f"step-{step}-{uuid.uuid4().hex[:12]}.json"
    extras = {"step": step, "args": args, "result_path": str(result_path), "language": language}
    code: int | None = 0
    messages: list = []
    try:
        messages = list(_launch(context, forge, extras).get_custom_messages())
    except Exception as exc:  # noqa: BLE001 - any launch or exit failure is reported below, with the step named
        m = re.search(r"code (-?\d+)", str(exc))
        code = int(m.group(1)) if m else None
        if m is None and not result_path.is_file():
            raise
    try:
        outcome = json.loads(result_path.read_text()) if result_path.is_file() else {}
    finally:
        result_path.unlink(missing_ok=True)
    if code == 0 and (reported := [m for m in messages if isinstance(m, dict) and "result" in m]):
        return reported[-1]["result"]  # what the step sent back through Pipes
    if "result" in outcome and code == 0:
        return outcome["result"]
    if "error" in outcome:
        err = outcome["error"]
        raise Failure(description=f"step `{step}` for `{language}` failed: {err['message']}",
                      metadata={"step": step, "error_type": err["type"], "exit_code": code if code is not None else ERROR_EXIT})
    what, fix = crash_message(step, language, outcome.get("phase"), code)
    context.log.error(f"{what} {fix}")
    raise Failure(description=f"{what} {fix}",
                  metadata={"step": step, "phase": outcome.get("phase") or "unknown", "exit_code": code if code is not None else -1,
                            "signal": _signal_name(code) if code is not None and code < 0 else "none"})


def _launch(context: AssetExecutionContext, forge, extras: dict):
    if forge.step_runner == "k8s":
        return _launch_k8s(context, forge, extras)
    if forge.step_runner == "subprocess":
        return PipesSubprocessClient(forward_termination=True).run(context=context, command=STEP_COMMAND, extras=extras,
                                                                   env={"PYTHONUNBUFFERED": "1"})
    else:
        raise Failure(description=f"unknown step runner `{forge.step_runner}`. Fix: use `subprocess` (default) or `k8s`.")


def k8s_pod_spec(forge) -> dict:
    """The pod spec a step runs in: the image's Python, the artifact volume mounted at the same path, GPUs if asked."""
    container: dict = {"name": "forge-step", "resources": {"limits": {}}}
    if forge.k8s_gpus:
        container["resources"]["limits"]["nvidia.com/gpu"] = str(forge.k8s_gpus)
    if forge.k8s_memory:
        container["resources"]["limits"]["memory"] = forge.k8s_memory
    spec: dict = {"containers": [container], "restartPolicy": "Never"}
    if forge.k8s_pvc:
        root = str(forge.store().root.resolve())
        container["volumeMounts"] = [{"name": "forge-artifacts", "mountPath": root}]
        spec["volumes"] = [{"name": "forge-artifacts", "persistentVolumeClaim": {"claimName": forge.k8s_pvc}}]
    return spec


def _launch_k8s(context: AssetExecutionContext, forge, extras: dict):
    try:
        from dagster_k8s import PipesK8sClient
    except ImportError:
        raise Failure(description="step_runner is `k8s` but dagster-k8s is not installed. Fix: pip install dagster-k8s==0.29.27.") from None
    if not forge.k8s_image:
        raise Failure(description="step_runner is `k8s` but no image is set. Fix: set FORGE_K8S_IMAGE to an image with Forge installed.")
    return PipesK8sClient().run(context=context, image=forge.k8s_image, command=["python", "-m", "forge_assets.steps"], extras=extras,
                         namespace=forge.k8s_namespace or None, base_pod_spec=k8s_pod_spec(forge),
                         env={"FORGE_CONFIG": str(Path(forge.config_path or "forge.yaml").resolve()), "PYTHONUNBUFFERED": "1"})
