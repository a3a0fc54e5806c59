"""Experiment tracking (forge.yaml `tracking: mlflow`): one MLflow run per language per materialization.

`record_training` (the adapter asset, after it wrote a new adapter version) opens the run and logs the training
settings and input versions as params, the train / validation loss curves (and the learning rate) as step metrics,
the adapter folder as artifacts, and tags: language, adapter version, dataset version, base model version, the
repository commits of the snapshot the dataset was mined from, the Dagster run id. `record_eval` (eval_scores) puts
the eval figures (every numeric key of scores.json: base_*, adapter_*, champion_*, ...), the validation report and
scores.json into the run of the adapter version it judged: the newest run tagged with that adapter version and
language. When there is none (the adapter was trained before tracking was on), it opens one and logs the stored
adapter's training part first, so every run has the same shape.

Where: `MLFLOW_TRACKING_URI` when set (a server, or any store MLflow knows); else a SQLite store,
`sqlite:///<artifact_root>/mlflow/mlflow.db`, with artifacts in `<artifact_root>/mlflow/artifacts/<language>`
(MLflow 3.7+'s own default backend is SQLite too; its file store is legacy). That folder is private like the rest of
the artifact root (0700, files 0600), and writers of the local store take a file lock, so parallel partitions never
race on it. The store has a schema version: the MLflow UI that browses it must be the same MLflow version as the
mlflow-skinny Forge pins (docs/tracking.md).

Never in the way: with `tracking` unset both functions return at once without importing MLflow. Any failure
(MLflow not installed, an unreachable server, a locked database) is a WARNING naming the reason, and training or
evaluation goes on: tracking records a run, it never decides one. Against a server, Forge's calls retry twice with a
20-second timeout unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT say otherwise (MLflow's own
defaults wait up to ~4 minutes per call on a server that is down).

Privacy: every param, tag and text logged passes through redact_text (a URL's password or token becomes ***), and
the tracking URI itself is never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from forge_assets.private import ensure_private_dir, redact_text

_logger = logging.getLogger(__name__)

STORE_DIR = "mlflow"  # under artifact_root
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
LOCK_NAME = ".lock"
EXPERIMENT_PREFIX = "forge-"  # one experiment per language: forge-python, forge-rust, ...
TAG = "forge."
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_BATCH = 900  # MLflow takes at most 1000 metrics (and 100 params) per log_batch
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")

Warn = Callable[[str], object] | None


def record_training(cfg, language: str, adapter_artifact, inputs: dict, run_id: str | None,
                    commits: dict | list | None, log: Warn = None) -> str | None:
    """Open this materialization's MLflow run for a newly written adapter version; returns the MLflow run id, or
    None when tracking is off or failed (a warning says why: training is never failed by tracking).

    `inputs`: the input versions (dataset, base_model, adapter: the parent); `run_id`: the Dagster run id;
    `commits`: the repositories' commits of the snapshot ({repo: sha} or a list); `log`: where the warning goes
    besides Python logging (context.log.warning)."""
    if getattr(cfg, "tracking", None) is None:
        return None
    try:
        with _client(cfg) as (client, _):
            exp = _experiment(client, cfg, language)
            return _open_run(client, exp, language, adapter_artifact, inputs, run_id, commits)
    except Exception as exc:  # noqa: BLE001 - tracking records a run, it never fails one
        _warn(log, f"MLflow tracking skipped for the `{language}` adapter {getattr(adapter_artifact, 'version', '?')}: "
                   f"{type(exc).__name__}: {exc}")
        return None


def record_eval(cfg, language: str, adapter_version: str, eval_version: str, scores: dict, report_md: str | None,
                run_id: str | None, log: Warn = None) -> str | None:
    """Log eval_scores' figures, the validation report and scores.json into the MLflow run of `adapter_version`
    (opened by record_training; opened here when there is none); returns the MLflow run id, or None when tracking is
    off or failed (a warning says why)."""
    if getattr(cfg, "tracking", None) is None:
        return None
    try:
        with _client(cfg) as (client, _):
            exp = _experiment(client, cfg, language)
            mlrun = _find_run(client, exp, language, adapter_version)
            if mlrun is None:  # trained before tracking was on: the run starts from the stored adapter
                from forge_assets.artifacts import ArtifactStore

                adapter = ArtifactStore(cfg.artifact_path).get("adapter", language, adapter_version)
                manifest = adapter.manifest()
                mlrun = _open_run(client, exp, language, adapter, manifest.get("inputs") or {}, run_id,
                                  _stored_commits(cfg, language, (manifest.get("inputs") or {}).get("dataset")))
            _log_eval(client, mlrun, eval_version, scores, report_md, run_id)
            return mlrun
    except Exception as exc:  # noqa: BLE001 - tracking records a run, it never fails one
        _warn(log, f"MLflow tracking skipped for the `{language}` eval_scores {eval_version} (adapter {adapter_version}): "
                   f"{type(exc).__name__}: {exc}")
        return None


def snapshot_commits(store, dataset_artifact) -> dict | None:
    """{repo: commit} of the repo_snapshot a dataset version was mined from, or None (never raises)."""
    try:
        snap = dataset_artifact.manifest()["inputs"]["repo_snapshot"]
        return store.get("repo_snapshot", dataset_artifact.language, snap).manifest().get("commits")
    except Exception:  # noqa: BLE001 - removed by forge gc, or an old manifest: no commit tags
        return None


def tracking_uri(cfg) -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite store under the artifact root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local_store(cfg) / DB_NAME}"


def local_store(cfg) -> Path:
    """<artifact_root>/mlflow: the local store's folder (the database and the artifacts)."""
    return Path(cfg.artifact_path) / STORE_DIR


# -- internals ---------------------------------------------------------------------------------------


def _warn(log_fn: Warn, message: str) -> None:
    message = redact_text(message)
    _logger.warning(message)
    if log_fn is not None:
        with contextlib.suppress(Exception):
            log_fn(message)


@contextlib.contextmanager
def _client(cfg) -> Iterator[tuple[object, Path | None]]:
    """An MlflowClient on the tracking URI; for the local store, its folder made private and held under a file lock."""
    local = None if os.environ.get("MLFLOW_TRACKING_URI") else ensure_private_dir(local_store(cfg))
    with _http_defaults(), _locked(local):
        from mlflow.tracking import MlflowClient  # lazily: MLflow costs ~1 s to import and only matters here

        yield MlflowClient(tracking_uri=tracking_uri(cfg)), local


@contextlib.contextmanager
def _http_defaults() -> Iterator[None]:
    """Fewer retries and a shorter timeout than MLflow's (~4 minutes a call on a dead server), unless the user set them."""
    added = [k for k in _HTTP_DEFAULTS if k not in os.environ]
    for k in added:
        os.environ[k] = _HTTP_DEFAULTS[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _locked(folder: Path | None) -> Iterator[None]:
    """An exclusive lock on <folder>/.lock (processes of parallel partitions share one SQLite file); none for a server."""
    if folder is None:
        yield
        return
    from forge_assets.files import locked

    with locked(folder / LOCK_NAME):
        yield


def _experiment(client, cfg, language: str) -> str:
    """The experiment id of forge-<language>, created when missing (artifacts under the local store, if it is used)."""
    name = f"{EXPERIMENT_PREFIX}{language}"
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (local_store(cfg) / ARTIFACTS_DIR / language).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags={f"{TAG}language": language})
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _find_run(client, experiment_id: str, language: str, adapter_version: str) -> str | None:
    """The newest run of this adapter version and language, or None."""
    q = lambda s: str(s).replace("\\", "\\\\").replace("'", "\\'")  # noqa: E731
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG}adapter_version` = '{q(adapter_version)}' "
                                                             f"and tags.`{TAG}language` = '{q(language)}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _key(name: str) -> str:
    """A metric / param / tag key MLflow accepts (letters, digits, _ - . space /)."""
    return _KEY_BAD.sub("_", str(name))[:250]


def _text(value: object, limit: int = 6000) -> str:
    """A param or tag value: text with any URL's credentials masked, within MLflow's length limit."""
    return redact_text(value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True))[:limit]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a (nested) dict, keys joined with `.`; booleans, text, lists and None are left out."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif (x := _number(v)) is not None:
            out[_key(f"{prefix}{k}")] = x
    return out


def _commit_tags(commits: dict | list | None) -> dict[str, str]:
    if not commits:
        return {}
    if isinstance(commits, dict):
        tags = {f"{TAG}commit.{_key(repo)}": _text(sha) for repo, sha in sorted(commits.items())}
        shas = [str(s) for s in commits.values()]
    else:
        shas = [str(s) for s in commits]
        tags = {}
    tags[f"{TAG}commits"] = _text(",".join(shas))
    if len(set(shas)) == 1:  # MLflow's UI shows this one as the run's git commit
        tags["mlflow.source.git.commit"] = _text(shas[0])
    return tags


def _log_batch(client, mlrun: str, metrics: list | None = None, params: dict | None = None, tags: dict | None = None) -> None:
    from mlflow.entities import Param, RunTag

    metrics = metrics or []
    params_l = [Param(_key(k), _text(v)) for k, v in (params or {}).items()]
    tags_l = [RunTag(_key(k), _text(v, 5000)) for k, v in (tags or {}).items()]
    for i in range(0, len(params_l), 100):
        client.log_batch(mlrun, params=params_l[i:i + 100])
    if tags_l:
        client.log_batch(mlrun, tags=tags_l)
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(mlrun, metrics=metrics[i:i + _BATCH])


def _curve_metrics(name: str, curve: list, now: int) -> list:
    from mlflow.entities import Metric

    out = []
    for point in curve or []:
        try:
            step, value = int(point[0]), point[1]
        except (TypeError, ValueError, IndexError):
            continue
        if (x := _number(value)) is not None:
            out.append(Metric(name, x, now, step))
    return out


def _open_run(client, experiment_id: str, language: str, adapter, inputs: dict, run_id: str | None,
              commits: dict | list | None) -> str:
    """A new run for an adapter version with its training part logged; returns the MLflow run id."""
    from mlflow.entities import Metric

    manifest = adapter.manifest()
    result = manifest.get("result") or {}
    inputs = dict(inputs or manifest.get("inputs") or {})
    tags = {f"{TAG}language": language, f"{TAG}adapter_version": adapter.version,
            **({f"{TAG}dataset_version": inputs["dataset"]} if inputs.get("dataset") else {}),
            **({f"{TAG}base_model_version": inputs["base_model"]} if inputs.get("base_model") else {}),
            **({f"{TAG}parent_adapter_version": inputs["adapter"]} if inputs.get("adapter") else {}),
            **({f"{TAG}dagster_run_id": run_id} if run_id else {}),
            **_commit_tags(commits)}
    mlrun = client.create_run(experiment_id, run_name=f"{language}-{adapter.version[:8]}",
                              tags={_key(k): _text(v, 5000) for k, v in tags.items()}).info.run_id
    try:
        params = {f"training.{k}": v for k, v in sorted((manifest.get("training") or {}).items())}
        params.update({f"input.{k}": v for k, v in sorted(inputs.items())})
        params.update({f"result.{k}": result[k] for k in ("backend", "method", "precision", "train_on", "fim_scheme")
                       if result.get(k) is not None})
        now = int(time.time() * 1000)
        metrics = (_curve_metrics("train_loss", result.get("loss_curve"), now)
                   + _curve_metrics("valid_loss", result.get("valid_curve"), now)
                   + _curve_metrics("learning_rate", result.get("lr_curve"), now))
        scalars = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
        metrics += [Metric(f"training.{k}", x, now, 0) for k, x in _numbers(scalars).items()]
        _log_batch(client, mlrun, metrics=metrics, params=params)
        client.log_artifacts(mlrun, str(adapter.path), "adapter")
        client.set_terminated(mlrun, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(mlrun, "FAILED")
        raise
    return mlrun


def _log_eval(client, mlrun: str, eval_version: str, scores: dict, report_md: str | None, run_id: str | None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, x, now, 0) for k, x in _numbers(scores or {}).items()]
    _log_batch(client, mlrun, metrics=metrics,
               tags={f"{TAG}eval_version": eval_version, **({f"{TAG}eval_dagster_run_id": run_id} if run_id else {})})
    with tempfile.TemporaryDirectory(prefix="forge-mlflow-") as tmp:
        (Path(tmp) / "scores.json").write_text(redact_text(json.dumps(scores or {}, indent=2, sort_keys=True, default=str)))
        if report_md:
            (Path(tmp) / "validation_report.md").write_text(redact_text(report_md))
        client.log_artifacts(mlrun, tmp, "eval")


def _stored_commits(cfg, language: str, dataset_version: str | None) -> dict | None:
    if not dataset_version:
        return None
    try:
        from forge_assets.artifacts import ArtifactStore

        store = ArtifactStore(cfg.artifact_path)
        return snapshot_commits(store, store.get("dataset", language, dataset_version))
    except Exception:  # noqa: BLE001
        return None
