"""`forge run` as a user runs it: a segfault in one language's native step fails that step only, with a
clear block at the end; Ctrl-C stops the whole run; a run left STARTED by a killed process is failed next time."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge_assets_tests.conftest import free_port, write_config


def _forge(args, cwd: Path, env: dict, timeout: float = 600, **kw):
    return subprocess.run([sys.executable, "-m", "forge_assets.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture
def project(two_language_repo: Path, tmp_path: Path):
    cfg = write_config(tmp_path, [two_language_repo], languages=["python", "rust"], deploy={"port": free_port()})
    env = {**os.environ, "FORGE_CONFIG": str(cfg), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    yield tmp_path, env
    _forge(["stop"], tmp_path, env, timeout=120)


@pytest.mark.slow
def test_a_segfault_in_one_languages_native_step_fails_only_that_step(project):
    folder, env = project
    out = _forge(["run"], folder, {**env, "FORGE_FAULT_INJECT": "export_gguf:smoke_generate@python"})
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    block = out.stderr[out.stderr.index("forge: the run failed for python"):]
    assert "[python] step: gguf" in block
    assert "phase `smoke_generate` (llama.cpp) crashed with SIGSEGV in native code" in block
    assert "[python] fix:" in block and "GGML_NATIVE=OFF" in block
    assert "Traceback" not in block  # the stack stays in the logs
    # The crash did not take the orchestrator down: rust ran to a deployed tag after python failed.
    status = _forge(["status", "--language", "rust"], folder, env, timeout=120).stdout
    assert '"tag": "forge-rust:' in status
    root = folder / "artifacts"
    assert (root / "gguf" / "rust" / "promoted").exists()
    assert not list((root / "gguf" / "python").glob("*/manifest.json"))  # no half-made python GGUF was stored
    assert (root / "adapter" / "python" / "promoted").exists()  # the steps before the crash kept their work


@pytest.mark.slow
def test_ctrl_c_stops_forge_run_entirely(project):
    folder, env = project
    proc = subprocess.Popen([sys.executable, "-m", "forge_assets.cli", "run"], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until python's adapter is training, in its own process
        lines.append(line)
        if "train_adapter: train" in line or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "forge: interrupted" in output
    assert "materializing the `rust` chain" not in output  # the next language never started


def test_a_run_left_started_by_a_killed_process_is_marked_failed():
    import socket

    from dagster import DagsterEvent, DagsterEventType, DagsterRunStatus, instance_for_test

    from forge_assets.definitions import defs
    from forge_assets.runs import HOST_TAG, PGID_TAG, fail_stale_runs

    gone = subprocess.Popen(["true"], start_new_session=True)  # its own process group, which has ended
    gone.wait()
    with instance_for_test() as instance:
        job = defs.get_job_def("forge")
        killed = instance.create_run_for_job(job, tags={PGID_TAG: str(gone.pid), HOST_TAG: socket.gethostname()})
        alive = instance.create_run_for_job(job, tags={PGID_TAG: str(os.getpgid(0)), HOST_TAG: socket.gethostname()})
        for r in (killed, alive):
            instance.handle_run_event(r.run_id, DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=r.job_name))
        assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.STARTED
        assert fail_stale_runs(instance) == [killed.run_id]
        assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED  # a live group is left alone


@pytest.mark.slow
def test_kill_9_in_the_middle_leaves_nothing_that_breaks_the_next_run(py_repo: Path, tmp_path: Path):
    """kill -9 of the whole run after training saved a checkpoint: the next run cleans up and resumes training there."""
    cfg = write_config(tmp_path, [py_repo], languages=["python"], deploy={"port": free_port()},
                       training={"max_steps": 40, "batch_size": 1, "checkpoint_every": 4})
    env = {**os.environ, "FORGE_CONFIG": str(cfg), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    root = tmp_path / "artifacts"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "forge_assets.cli", "run"], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while not list((root / "adapter" / "python").glob(".checkpoints/*/checkpoint-*/forge-complete.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # everything, while the adapter is half-trained
        proc.wait(timeout=60)
        assert list(root.rglob(".tmp-*"))  # the killed writers left their temp folders ...
        out = _forge(["run"], tmp_path, env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        assert "left STARTED by a process that is gone; marked it failed" in out.stdout
        assert not list(root.rglob(".tmp-*"))  # ... and the next run removed them
        assert (root / "deployment" / "python" / "promoted").exists()
        result = json.loads(((root / "adapter" / "python" / "candidate") / "manifest.json").read_text())["result"]
        assert result["resumed_from"] and result["resumed_from"] % 4 == 0  # training went on from its checkpoint
        assert [s for s, _ in result["loss_curve"]] == list(range(1, 41))
        assert not list((root / "adapter" / "python" / ".checkpoints").iterdir())  # removed once the adapter is stored
    finally:
        _forge(["stop"], tmp_path, env, timeout=120)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_group_of_unreaped_zombies_is_gone():
    """A killed run's processes can stay zombies until someone reaps them; kill(-pgid, 0) still succeeds on them."""
    from forge_assets.runs import group_alive

    child = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own group; we are its parent
    try:
        assert group_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.01)
        os.killpg(child.pid, 0)  # the signal test still sees the zombie (no ProcessLookupError) ...
        assert not group_alive(child.pid)  # ... group_alive does not
    finally:
        child.kill()
        child.wait()
    assert not group_alive(child.pid)
