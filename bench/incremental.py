"""Benchmark: commit to served after a one-file push, incremental training (init_from: previous) against a full retrain.

    python bench/incremental.py [REPO_PATH] [--epochs E] [--file REL_PATH] [--keep]

With no path, this repository is cloned (``git clone`` of the checkout the bench runs from: its committed history,
offline) into a temporary folder; a path names another local repository, cloned the same way (never written to).
On forge-tiny (the default base, built locally: its default shape, pretrained 100 steps instead of 500 since that is
untimed setup) and a small, fixed configuration, it:

1. builds the starting point, untimed: the first ``git_push_sensor`` tick (real DagsterInstance) and the ``forge`` job
   for the python partition (base_model, the chain with ``init_from: base``, served on a free port), as ``forge run``
   does; then copies that artifact root, so both arms start from the very same served adapter, and serves the copy
   on a second free port (both endpoints answer before the push);
2. pushes: a real commit in the clone that appends a small function to one Python file (``--file``, default the
   tracked Python file of 50+ lines whose last change is oldest: a file that is not already the newest change);
3. times each arm from the push to a served adapter: a ``git_push_sensor`` tick (with the cursor of step 1, so it
   sees the push and requests the language's run), then the run the sensor requested, as the daemon launches it:
   the ``language_chain`` job for that partition with the request's tags (repo_snapshot, session_logs, dataset,
   adapter, eval_scores, gguf, deployment; per-asset seconds from each step's STEP_SUCCESS duration);
   - incremental: ``training.init_from: previous``: the promoted adapter continues on the train samples that are
     new since its dataset plus ``replay`` (0.2) of the mix drawn from older ones
     (forge_assets/training/adapter.py, ``incremental_texts``: n_old = n_new * replay / (1 - replay));
   - full (the baseline, what a push costs without it): ``training.init_from: base``: a fresh adapter on the whole
     train split.
   Training is sized by ``epochs``, never ``max_steps``, so each arm trains the steps its own mix needs: the same
   ``epochs`` (default 0.2, ``--epochs``) for the served adapter and both arms. At 0.2 the bench took 17 minutes on 2
   CPU cores shared with other test runs (half of it the untimed setup); one epoch of this repository's train split
   (~3,000 samples, ~1.3 M forge-tiny tokens) is about 15 minutes of training there, and the setup trains one too. Both arms use the same eval (20 perplexity samples per kind, 8 FIM
   cases, no CodeBLEU nor HumanEval) and validation (``val_batches`` 10), and both score the champion (the served
   adapter) too, since each has one; gates are relaxed so both reach deployment (the bench times the path, it does
   not judge quality: the adapters' held-out perplexities are printed beside).

Prints one JSON line: repository, commits, files changed, per-stage seconds of each arm and their totals, the ratio
full / incremental per stage and in total, the samples, steps and tokens each arm trained (and, for the incremental
arm, its new samples by kind), the load (``uptime``) at start and end, each arm's total extrapolated to one epoch
(its training loop scaled linearly: not measured), and an estimate for a 7B model on one GPU: training FLOPs for one
epoch of each arm's mix = 6 x 7e9 x its non-pad tokens per epoch (measured here, forge-tiny's tokenizer), at an
assumed sustained 125 TFLOP/s (A100, ~40 % of its 312 TFLOP/s dense bf16) or 400 TFLOP/s (H100 SXM, ~40 % of 989).
6N per token is the full fine-tuning figure; LoRA skips the frozen weights' gradients (~4N), and forge-tiny's
2,048-token vocabulary cuts code into more tokens than a 7B's ~150k one, so the estimate leans high. It covers
training only: eval, GGUF export and deploy of a 7B model take minutes more in both arms and are not estimated.

Progress goes to stderr; stdout carries the JSON line only. Both servers are stopped and the temporary folder is
removed at the end, also on Ctrl-C or SIGTERM (``--keep`` keeps the folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import stdout_to_stderr  # noqa: E402 (bench/ is on sys.path when run as a script)
from forge_assets.files import free_port  # noqa: E402

LANGUAGE = "python"
STAGES = ("repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf", "deployment")
PARAMS_7B = 7e9
FLOPS_PER_TOKEN = 6  # x parameters: forward 2N + backward 4N (full fine-tuning; LoRA needs ~4N)
SUSTAINED_TFLOPS = {"a100": 125.0, "h100": 400.0}  # ~40 % of 312 / 989 TFLOP/s dense bf16 peak
APPENDED = '''

def running_totals(values):
    """The running totals of values: [1, 2, 3] -> [1, 3, 6] (added by bench/incremental.py's one-file push)."""
    out, total = [], 0
    for value in values:
        total += value
        out.append(total)
    return out
'''
GIT_ENV = {"GIT_AUTHOR_NAME": "Forge bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "Forge bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}


class BenchError(RuntimeError):
    """A stage of the benchmark failed: which one and why."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


def say(msg: str) -> None:
    print(f"bench/incremental: {msg}", file=sys.stderr, flush=True)


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    if out.returncode != 0:
        raise BenchError("git", f"`git {' '.join(args)}` in {repo} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _pick_file(clone: Path) -> str:
    """The tracked Python file of at least 50 lines whose last change is oldest (ties: path order)."""
    stamps: dict[str, int] = {}
    stamp = 0
    for line in _git(clone, "log", "--format=@%ct", "--name-only", "--", "*.py").splitlines():
        if line.startswith("@"):
            stamp = int(line[1:])
        elif line and line not in stamps:  # newest first: the first time seen is the file's last change
            stamps[line] = stamp
    tracked = set(_git(clone, "ls-files", "--", "*.py").splitlines())
    candidates = []
    for rel in tracked & set(stamps):
        try:
            lines = (clone / rel).read_text(encoding="utf-8").count("\n")
        except (OSError, UnicodeDecodeError):
            continue
        if lines >= 50:
            candidates.append((stamps[rel], rel))
    if not candidates:
        raise BenchError("push", f"{clone} tracks no Python file of 50 lines or more with history. Fix: pass --file.")
    return min(candidates)[1]


def _push(clone: Path, rel: str) -> str:
    """A real commit that appends a small function to one Python file; returns its sha."""
    path = clone / rel
    if not path.is_file():
        raise BenchError("push", f"{rel} is not a file in the clone of the repository.")
    path.write_text(path.read_text(encoding="utf-8").rstrip("\n") + "\n" + APPENDED, encoding="utf-8")
    _git(clone, "commit", "-q", "-m", f"{rel}: add running_totals", "--", rel)
    return _git(clone, "rev-parse", "HEAD").strip()


def _config(root: Path, repo: Path, port: int, init_from: str, args) -> dict:
    """The forge.yaml of one arm: forge-tiny, sized by epochs, a small eval identical for both arms, relaxed gates."""
    return {
        "artifact_root": str(root),
        "repos": [{"path": str(repo)}],
        "languages": [LANGUAGE],
        "base_model": "forge-tiny",
        "tiny_model": {"pretrain_steps": args.pretrain_steps},
        "training": {"backend": "peft", "epochs": args.epochs, "init_from": init_from, "val_batches": args.val_batches,
                     **({"replay": args.replay} if init_from == "previous" else {})},
        "eval": {"perplexity_samples": 20, "fim_cases": 8, "fim_max_new_tokens": 16, "codebleu_samples": 0,
                 "humaneval": {"problems": 0}, "gguf_windows": 8, "gguf_window_tokens": 256},
        # The bench times the path: relaxed so neither arm is stopped by a gate (not_worse_than_served stays on, so
        # both arms score the champion, the served adapter, as a real run does).
        "gates": {"max_perplexity_ratio": 100.0, "fim_not_worse": False, "max_humaneval_regression_points": 100.0,
                  "not_worse_than_served": True, "served_tolerance": 1.0, "max_quantization_loss_pct": 100.0},
        "deploy": {"target": "llama-server", "host": "127.0.0.1", "port": port},
    }


def _write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _failure(result) -> str:
    from forge_assets.cli import failure_summary

    items = failure_summary(result)
    return "; ".join(f"step {i['step']}: {i['cause']} (fix: {i['fix']})" for i in items) or "the run failed without a step failure"


def _quiet() -> dict:
    """Dagster's console log at INFO (each asset's own lines, no DEBUG events); BENCH_DAGSTER_LOG_LEVEL overrides it."""
    return {"loggers": {"console": {"config": {"log_level": os.environ.get("BENCH_DAGSTER_LOG_LEVEL", "INFO")}}}}


def _tick(instance, cursor: str | None, label: str):
    """One git_push_sensor evaluation against the instance; its dynamic-partition requests applied. (result, seconds)"""
    from dagster import SensorResult, build_sensor_context

    from forge_assets.definitions import defs
    from forge_assets.sensors import git_push_sensor

    started = time.perf_counter()
    result = git_push_sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    seconds = time.perf_counter() - started
    if not isinstance(result, SensorResult) or not result.run_requests:
        raise BenchError(f"{label} sensor", f"git_push_sensor requested no run: {getattr(result, 'skip_message', result)}")
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    wanted = [r for r in result.run_requests if r.partition_key == LANGUAGE]
    if not wanted:
        raise BenchError(f"{label} sensor", f"git_push_sensor requested runs for {[r.partition_key for r in result.run_requests]}, not {LANGUAGE}.")
    return result, wanted[0], seconds


def _execute(job_name: str, instance, request, label: str):
    """The job run the sensor requested (partition and tags), in process as the daemon's run worker executes it."""
    from forge_assets.definitions import defs

    job = defs.resolve_job_def(job_name) if hasattr(defs, "resolve_job_def") else defs.get_job_def(job_name)
    started = time.perf_counter()
    result = job.execute_in_process(partition_key=request.partition_key, instance=instance, tags=dict(request.tags),
                                                           run_config=_quiet(), raise_on_error=False)
    wall = time.perf_counter() - started
    if not result.success:
        raise BenchError(label, _failure(result))
    steps: dict[str, float] = {}
    meta: dict[str, dict] = {}
    for ev in result.all_events:
        if ev.event_type_value == "STEP_SUCCESS":
            steps[ev.step_key] = ev.event_specific_data.duration_ms / 1000
    for ev in result.get_asset_materialization_events():
        mat = ev.event_specific_data.materialization
        meta[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return steps, meta, wall


def _served(store_root: Path) -> dict:
    from forge_assets.deploy import llama_server

    h = llama_server.health(store_root / "deployment" / "_endpoint")
    if not h["ok"]:
        raise BenchError("deployment", f"the endpoint does not answer after the run: {h['health']}")
    return {"endpoint": h["endpoint"], "tag": h["tag"]}


def _training(store_root: Path, adapter_meta: dict) -> dict:
    """What the arm's adapter trained: samples, steps, tokens (from the adapter version's manifest)."""
    from forge_assets.artifacts import ArtifactStore

    store = ArtifactStore(store_root)
    art = store.get("adapter", LANGUAGE, adapter_meta["version"])
    man = art.manifest()
    r = man.get("result") or {}
    cfg = man.get("training") or {}
    rows, eff, epochs = r.get("packed_rows"), r.get("packing_efficiency"), r.get("epochs_run")
    per_epoch = round(rows * cfg.get("seq_len", 2048) * eff) if None not in (rows, eff) else None
    out = {"reused": bool(adapter_meta.get("reused")), "parent_adapter": man.get("parent_adapter"),
           "init_from": cfg.get("init_from"), "epochs": cfg.get("epochs"), "train_samples": r.get("train_samples"),
           "new_samples": r.get("new_samples"), "replayed_samples": r.get("replayed_samples"), "steps": r.get("steps"),
           "packed_rows_per_epoch": rows, "epochs_run": epochs, "trained_tokens": r.get("trained_tokens"),
           "tokens_per_epoch": per_epoch, "tokens_processed": round(per_epoch * epochs) if per_epoch and epochs else None,
           "train_loop_seconds": r.get("seconds"), "setup_seconds": r.get("setup_seconds"),
           "validation_seconds": r.get("validation_seconds")}
    if man.get("parent_adapter"):
        out["new_samples_by_kind"] = _new_by_kind(store, man)
    return out


def _new_by_kind(store, man: dict) -> dict:
    """The train samples new since the parent's dataset, by kind (raw JSONL text hashed, as incremental_texts does)."""
    import hashlib
    from collections import Counter

    def rows(version: str) -> list[dict]:
        path = store.get("dataset", LANGUAGE, version).path / "train.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    try:
        parent = store.get("adapter", LANGUAGE, man["parent_adapter"]).manifest()["inputs"]["dataset"]
        seen = {hashlib.sha256(r["text"].encode()).digest() for r in rows(parent)}
        return dict(Counter(r.get("kind", "?") for r in rows(man["inputs"]["dataset"])
                            if hashlib.sha256(r["text"].encode()).digest() not in seen).most_common())
    except (KeyError, OSError, ValueError) as exc:
        return {"error": str(exc)}


def _arm(label: str, cfg_path: Path, store_root: Path, instance, cursor: str) -> dict:
    """From the push to a served adapter: the sensor tick, then the run it requested."""
    os.environ["FORGE_CONFIG"] = str(cfg_path)
    say(f"{label}: sensor tick")
    _result, request, tick_s = _tick(instance, cursor, label)
    say(f"{label}: the sensor requested run {request.run_key} ({tick_s:.2f} s); running the {LANGUAGE} chain")
    steps, meta, wall = _execute("language_chain", instance, request, label)
    missing = [s for s in STAGES if s not in steps]
    if missing:
        raise BenchError(label, f"the run succeeded without these steps: {missing} (steps: {sorted(steps)})")
    stages = {"sensor": tick_s, **{s: steps[s] for s in STAGES}, "run_overhead": max(0.0, wall - sum(steps[s] for s in STAGES))}
    scores = meta.get("eval_scores", {})
    out = {"stages": {k: round(v, 2) for k, v in stages.items()}, "total_seconds": round(tick_s + wall, 2),
           "training": _training(store_root, meta["adapter"]), "served": _served(store_root),
           "reused": sorted(k for k, m in meta.items() if m.get("reused")),
           "adapter_perplexity": scores.get("adapter_perplexity"), "champion_perplexity": scores.get("champion_perplexity"),
           "base_perplexity": scores.get("base_perplexity"), "eval_scored_champion": bool(scores.get("champion_version"))}
    say(f"{label}: served {out['served']['tag']} {out['total_seconds']:.1f} s after the push "
        f"({out['training']['steps']} steps on {out['training']['train_samples']} samples)")
    return out


def _at_one_epoch(arm: dict) -> float:
    """The arm's total with its training loop scaled to epochs: 1 (Forge's default): an extrapolation, not a measurement."""
    t = arm["training"]
    if not t["epochs_run"] or t["train_loop_seconds"] is None:
        return arm["total_seconds"]
    return round(arm["total_seconds"] + t["train_loop_seconds"] * (1 / t["epochs_run"] - 1), 1)


def _estimate(arms: dict) -> dict:
    """Training time of a 7B model on one GPU for one epoch of each arm's mix, from the tokens measured per epoch here."""
    out = {"params": PARAMS_7B, "epochs": 1, "flops_per_token": f"{FLOPS_PER_TOKEN} x params",
           "sustained_tflops": SUSTAINED_TFLOPS,
           "assumptions": ("training only, one epoch (Forge's default) of each arm's mix; tokens = the non-pad tokens per epoch "
                           "of the packed rows measured here (forge-tiny's 2,048-token vocabulary: more tokens per text than a "
                           "7B's ~150k one); 6N FLOPs per token is full fine-tuning's figure, LoRA needs ~4N; sustained "
                           "throughput ~40 % of the bf16 dense peak (A100 312, H100 SXM 989 TFLOP/s); eval, GGUF export and "
                           "deploy of a 7B model are not estimated (minutes more in both arms)")}
    for name, arm in arms.items():
        tokens = arm["training"]["tokens_per_epoch"] or 0
        flops = FLOPS_PER_TOKEN * PARAMS_7B * tokens
        out[f"{name}_tokens"] = tokens
        for gpu, tflops in SUSTAINED_TFLOPS.items():
            out[f"{name}_training_seconds_{gpu}"] = round(flops / (tflops * 1e12), 1)
    for gpu in SUSTAINED_TFLOPS:
        inc, full = out[f"incremental_training_seconds_{gpu}"], out[f"full_training_seconds_{gpu}"]
        out[f"training_ratio_{gpu}"] = round(full / inc, 1) if inc else None
    return out


def run(args, tmp: Path) -> dict:
    started = time.perf_counter()
    load_start = _uptime()
    src = Path(args.repo).resolve() if args.repo else ROOT
    clone = tmp / "repo"
    say(f"cloning {src} (offline)")
    _git(tmp, "clone", "--quiet", "--no-hardlinks", str(src), str(clone))
    commits = int(_git(clone, "rev-list", "--count", "HEAD").strip())
    rel = args.file or _pick_file(clone)

    port_a, port_b = free_port(), free_port()
    while port_b == port_a:
        port_b = free_port()
    root_a, root_b = tmp / "incremental" / "artifacts", tmp / "full" / "artifacts"
    cfg_a, cfg_b = tmp / "incremental" / "forge.yaml", tmp / "full" / "forge.yaml"
    root_a.parent.mkdir(parents=True)
    root_b.parent.mkdir(parents=True)
    _write_config(cfg_a, _config(root_a, clone, port_a, "base", args))  # the first adapter is trained from the base
    os.environ["FORGE_CONFIG"] = str(cfg_a)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from dagster import AssetSelection, DagsterInstance, materialize

    from forge_assets.definitions import all_assets
    from forge_assets.resources import ForgeResource

    # 1. the starting point, untimed: the first tick and `forge run`'s job, served; then the copy, served on its own port
    setup_started = time.perf_counter()
    inst_a = DagsterInstance.ephemeral()
    say(f"setup: first sensor tick on {commits} commits, then the forge job (base_model + the {LANGUAGE} chain)")
    first, request, _ = _tick(inst_a, None, "setup")
    cursor = first.cursor
    _execute("forge", inst_a, request, "setup (initial chain)")
    _served(root_a)
    say(f"setup: initial chain served on port {port_a} after {time.perf_counter() - setup_started:.0f} s; copying it for the full arm")
    shutil.copytree(root_a, root_b, symlinks=True)
    shutil.rmtree(root_b / "deployment" / "_endpoint", ignore_errors=True)  # the copy gets its own server
    _write_config(cfg_b, _config(root_b, clone, port_b, "base", args))
    os.environ["FORGE_CONFIG"] = str(cfg_b)
    inst_b = DagsterInstance.ephemeral()
    inst_b.add_dynamic_partitions("language", [LANGUAGE])
    res = materialize(all_assets, instance=inst_b, partition_key=LANGUAGE, selection=AssetSelection.assets("deployment"),
                      resources={"forge": ForgeResource(config_path=str(cfg_b))}, run_config=_quiet(), raise_on_error=False)
    if not res.success:
        raise BenchError("setup (serving the copy)", _failure(res))
    _served(root_b)
    setup_s = time.perf_counter() - setup_started

    # 2. the push
    _write_config(cfg_a, _config(root_a, clone, port_a, "previous", args))  # from now on the incremental arm continues
    sha = _push(clone, rel)
    files_changed = len([f for f in _git(clone, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).splitlines() if f])
    say(f"pushed {sha[:12]}: appended a function to {rel}")

    # 3. the two arms, from the push to a served adapter
    arms = {"incremental": _arm("incremental", cfg_a, root_a, inst_a, cursor),
            "full": _arm("full", cfg_b, root_b, inst_b, cursor)}
    inc, full = arms["incremental"], arms["full"]
    by_stage = {k: (round(full["stages"][k] / inc["stages"][k], 2) if inc["stages"][k] else None) for k in inc["stages"]}
    return {
        "repo": str(src), "commits": commits, "pushed_commit": sha, "files_changed": files_changed, "file": rel,
        "language": LANGUAGE, "base_model": "forge-tiny",
        "config": {"epochs": args.epochs, "replay": args.replay, "val_batches": args.val_batches, "seq_len": 2048, "batch_size": 4,
                   "pretrain_steps": args.pretrain_steps,
                   "eval": "20 perplexity samples per kind, 8 FIM cases, no CodeBLEU, no HumanEval, 8 GGUF windows x 256 tokens",
                   "gates": "relaxed (the bench times the path)"},
        "incremental": inc, "full": full,
        "total_seconds": {"incremental": inc["total_seconds"], "full": full["total_seconds"]},
        "ratio": round(full["total_seconds"] / inc["total_seconds"], 2),
        "ratio_by_stage": by_stage,
        "trained_tokens_ratio": (round(full["training"]["tokens_processed"] / inc["training"]["tokens_processed"], 1)
                                 if inc["training"]["tokens_processed"] else None),
        "extrapolated_total_seconds_at_epochs_1": {"incremental": _at_one_epoch(inc), "full": _at_one_epoch(full),
                                                   "note": "each arm's training loop scaled linearly to one epoch; not measured"},
        "estimate_7b_one_gpu": _estimate(arms),
        "setup_seconds": round(setup_s, 1), "bench_seconds": round(time.perf_counter() - started, 1),
        "load_start": load_start, "load_end": _uptime(), "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", nargs="?", help="a local git repository to clone (default: this repository)")
    ap.add_argument("--file", help="the Python file the push edits, relative to the repository (default: the oldest-changed one)")
    ap.add_argument("--epochs", type=float, default=0.2, help="training.epochs of both arms and of the served adapter (default 0.2; "
                    "Forge's default 1 makes a full retrain of this repository ~15 min of training on 2 cores)")
    ap.add_argument("--replay", type=float, default=0.2, help="training.replay of the incremental arm (default 0.2, Forge's)")
    ap.add_argument("--val-batches", type=int, default=10, help="training.val_batches of both arms (default 10; Forge's is 25)")
    ap.add_argument("--pretrain-steps", type=int, default=100, help="forge-tiny's pretraining steps (default 100; Forge's is 500): "
                    "part of the untimed setup, and no timed stage depends on it")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed to stderr)")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)  # cleanup (servers, temporary folder) on kill as on Ctrl-C
    tmp = Path(tempfile.mkdtemp(prefix="forge-bench-incremental-"))
    out: dict
    code = 0
    try:
        with stdout_to_stderr():
            try:
                out = run(args, tmp)
            except BenchError as exc:
                out, code = {"error": str(exc), "stage": exc.stage}, 1
            except KeyboardInterrupt:
                out, code = {"error": "interrupted", "stage": "interrupted"}, 130
            except Exception as exc:  # noqa: BLE001 - any other failure: one JSON line naming it, not a bare traceback
                import traceback

                traceback.print_exc()
                out, code = {"error": f"{type(exc).__name__}: {exc}", "stage": "unexpected"}, 1
            finally:
                _stop_servers(tmp)
        if code:
            say(f"failed: {out['error']}")
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))
    return code


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_servers(tmp: Path) -> None:
    """`forge stop` for both artifact roots: only the processes Forge recorded (pid, start time, command line)."""
    from forge_assets.deploy import llama_server

    for arm in ("incremental", "full"):
        state_dir = tmp / arm / "artifacts" / "deployment" / "_endpoint"
        try:
            stopped = llama_server.stop(state_dir)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on with the other arm
            say(f"could not stop the {arm} arm's server: {exc}")
            continue
        if stopped:
            say(f"stopped the {arm} arm's server ({'; '.join(stopped.get('messages') or [])})")


if __name__ == "__main__":
    sys.exit(main())
