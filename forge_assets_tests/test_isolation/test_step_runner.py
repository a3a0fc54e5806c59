"""The heavy-step entry point (`python -m forge_assets.steps`) and the Kubernetes runner's pod spec."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge_assets.assets.isolation import crash_message, k8s_pod_spec
from forge_assets.resources import ForgeResource
from forge_assets.steps import ERROR_EXIT, run


def test_a_step_error_is_written_as_a_message_not_a_crash(tmp_path: Path):
    result = tmp_path / "result.json"
    code = run("evaluate", {"base": str(tmp_path / "nope"), "adapter": str(tmp_path / "nope"), "dataset": str(tmp_path), "seq_len": 64},
               result, log=lambda _: None, language="python")
    assert code == ERROR_EXIT
    err = json.loads(result.read_text())["error"]
    assert "test and valid splits are empty" in err["message"] and "Fix:" in err["message"]


def test_the_fault_drill_is_a_real_segfault_of_the_step_process(tmp_path: Path):
    result = tmp_path / "result.json"
    code = f"""
from pathlib import Path
from forge_assets.steps import run
run("evaluate", {{}}, Path({str(result)!r}), log=print, language="rust")
"""
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FORGE_FAULT_INJECT": "evaluate:start@rust"}, capture_output=True)
    assert proc.returncode == -11  # SIGSEGV
    assert json.loads(result.read_text())["phase"] == "start"  # the orchestrator learns where it died


def test_crash_messages_name_step_phase_signal_and_fix():
    what, fix = crash_message("train_adapter", "rust", "train", -9)
    assert "step `train_adapter` for `rust`, phase `train` (torch) was killed by SIGKILL" in what and "memory" in fix
    what, fix = crash_message("export_gguf", "go", "quantize", -11)
    assert "SIGSEGV" in what and "GGML_NATIVE=OFF" in fix
    what, _ = crash_message("evaluate", "go", None, 7)
    assert "exited with code 7" in what


def test_k8s_step_pods_mount_the_artifact_volume_at_the_same_path_and_ask_for_gpus(tmp_path: Path):
    (tmp_path / "forge.yaml").write_text(f"artifact_root: {tmp_path / 'artifacts'}\n")
    forge = ForgeResource(config_path=str(tmp_path / "forge.yaml"), step_runner="k8s", k8s_image="ghcr.io/team/forge:1", k8s_pvc="forge-data",
                          k8s_gpus=1, k8s_memory="64Gi")
    spec = k8s_pod_spec(forge)
    container = spec["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "64Gi"}
    assert container["volumeMounts"][0]["mountPath"] == str((tmp_path / "artifacts").resolve())
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "forge-data"


@pytest.mark.slow
def test_the_k8s_deployment_loads():
    env = {**os.environ, "FORGE_DEPLOYMENT": "k8s", "FORGE_K8S_IMAGE": "ghcr.io/team/forge:1", "FORGE_K8S_GPUS": "1"}
    out = subprocess.run(["dagster", "definitions", "validate", "-m", "forge_assets.definitions"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
