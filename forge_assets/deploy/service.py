"""Serving a stored GGUF version: the one path the `deployment` asset and `forge rollback` share.

deploy_gguf() serves a gguf artifact version on the configured target (targets.py: a llama.cpp server behind the
Forge router, blue-green with its smoke test, Ollama, mlx-lm, or a vLLM plan), records it as the `deployment` artifact (promoted: it is
what serves) and appends a `deploy` or `rollback` event to the deployment partition's history.jsonl with the
tag, the GGUF, the adapter and eval_scores it was made from, and their key scores.

It checks no quality gate: the asset re-checks the gate before calling it, and a rollback serves a version
that was deployed before.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import secrets
import socket
from pathlib import Path
from typing import Callable

from forge_assets.artifacts import Artifact, ArtifactError, ArtifactStore, input_key
from forge_assets.deploy import clients, targets
from forge_assets.deploy.targets import MLX_STATE  # noqa: F401  (deployment/<language>/mlx.json; importers read it here)
from forge_assets.evaluation import metrics
from forge_assets.files import atomic_write, read_json_object
from forge_assets.private import ensure_private_dir

CODE_VERSION = "2"  # 2: every language on one endpoint, base + LoRA  # the deployment asset's code version: part of the deployment artifact's input key
DEPLOY, ROLLBACK = "deploy", "rollback"

# The scores `forge status`, `forge history` and history events show, in this order, with a short label: each metric's
# `status` lines in the registry (evaluation/metrics/), eval_scores' from scores.json, gguf's from its manifest's figures.
_STATUS = {s.key: s for s in metrics.status_lines("eval_scores") + metrics.status_lines("gguf")}
EVAL_KEY_SCORES = {s.key: s.label for s in metrics.status_lines("eval_scores")}
GGUF_KEY_SCORES = {s.key: s.label for s in metrics.status_lines("gguf")}


ENDPOINT = "_endpoint"  # deployment/_endpoint: the one server every language's tag is served from


def endpoint_dir(store: ArtifactStore) -> Path:
    """Where the shared server's state, config and logs live (not a language)."""
    return store.root / "deployment" / ENDPOINT


API_KEY = "api_key"  # deployment/_endpoint/api_key: the endpoint's key (mode 0600)


def is_loopback(host: str) -> bool:
    """Whether a bind address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key_file(store: ArtifactStore, d) -> Path | None:
    """The endpoint's API key file: deploy.api_key written there (`$NAME`: from the environment), else the key kept
    there from before, else a new random key when deploy.host is not loopback; None for a loopback bind without one."""
    path = endpoint_dir(store) / API_KEY
    ensure_private_dir(store.root)
    key = d.api_key
    if key and key.startswith("$"):
        key = os.environ.get(key[1:])
        if not key:
            raise ArtifactError(f"deploy.api_key names the environment variable {d.api_key[1:]}, which is not set. Fix: export "
                                f"{d.api_key[1:]}=<key> before `forge run`, or remove deploy.api_key from forge.yaml.")
    if key is None and path.is_file() and path.read_text().strip():
        return path
    if key is None and is_loopback(d.host):
        return None
    key = key or secrets.token_urlsafe(32)
    if not path.is_file() or path.read_text().strip() != key:
        atomic_write(path, key + "\n")  # 0600 from the start: the key is never readable by others, not even briefly
    os.chmod(path, 0o600)
    return path


def allowed_hosts(d) -> list[str]:
    """The Host-header names the server answers to: loopback names, deploy.host, deploy.allowed_hosts, and for a bind
    beyond loopback this machine's names and addresses (what a teammate's client puts in its URL)."""
    from forge_assets.deploy.forge_server import LOOPBACK_NAMES

    names = [*LOOPBACK_NAMES, d.host, *d.allowed_hosts]
    if not is_loopback(d.host):
        import psutil

        names += [socket.gethostname(), socket.getfqdn()]
        names += [a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
                  if a.family in (socket.AF_INET, socket.AF_INET6)]
    return sorted({n.lower().strip("[]") for n in names if n})


def server_options(store: ArtifactStore, d) -> dict:
    """forge_server's serving options from deploy: slots, key file, Host allow-list and the request limits."""
    key = api_key_file(store, d)
    return {"parallel": d.parallel, "api_key_file": str(key) if key else None, "allowed_hosts": allowed_hosts(d),
            "max_body_bytes": int(d.max_body_mb * (1 << 20)), "max_tokens_cap": d.max_output, "request_timeout": d.request_timeout_s}


def generation_settings(cfg, language: str, gguf: Artifact):
    """The system prompt and sampling parameters `language` is served with (deploy/settings.py), the system prompt
    defaulting to the chat template the gguf's model was trained with."""
    from forge_assets.chat import template_of
    from forge_assets.deploy.settings import generation

    return generation(cfg.deploy, language, template_of(gguf.path))


def generation_fingerprint(cfg, language: str, gguf: Artifact) -> str:
    from forge_assets.deploy.settings import fingerprint

    return fingerprint(generation_settings(cfg, language, gguf))


def model_entry(gguf: Artifact, tag: str, language: str, cfg=None) -> dict:
    """The server entry for a gguf version: the base GGUF and the language's LoRA GGUF (or the merged GGUF), and the
    chat template it was trained with (the tokenizer files kept beside it). With the project's config, also the tag's
    generation settings (`generation`: generation_settings(...).as_dict(), the Forge server's per-tag defaults and
    `GET /props`); an entry without them (a server started before them) is served with no defaults (greedy)."""
    from forge_assets.chat import template_of

    man = _read_json(gguf.path / "manifest.json").get("figures") or {}
    lora = gguf.path / man["lora_file"] if man.get("lora_file") else None
    if lora is not None and man.get("base_gguf") and Path(man["base_gguf"]).is_file() and lora.is_file():
        model, adapter = Path(man["base_gguf"]), lora
    else:
        model, adapter = gguf_path(gguf), None
    entry = {"id": tag, "language": language, "gguf": str(model), "lora": str(adapter) if adapter else None,
             "chat_template": template_of(gguf.path), "fim": fim_scheme(gguf)}
    if cfg is not None:
        entry["generation"] = generation_settings(cfg, language, gguf).as_dict()
    return entry


def fim_scheme(gguf: Artifact) -> str:
    """The FIM scheme name (fim_tokens.SCHEMES) of the base a gguf version was exported from: its tokenizer files are kept
    beside the GGUF (export.pipeline.KEEP), else the GGUF's own vocabulary is read."""
    from forge_assets.fim_tokens import scheme_of_folder, scheme_of_gguf

    if (gguf.path / "tokenizer.json").is_file() or (gguf.path / "tokenizer_config.json").is_file():
        return scheme_of_folder(gguf.path).name
    found = sorted(gguf.path.glob("*.gguf"))
    return scheme_of_gguf(found[0]).name if found else "qwen"


def context_for(gguf: Artifact, d) -> int:
    """deploy.context, or the model's trained context (config.json) and at least 32,768 (what real clients send)."""
    if d.context:
        return d.context
    trained = _read_json(gguf.path / "config.json").get("max_position_embeddings") or 0
    return max(int(trained), MIN_CONTEXT)


MIN_CONTEXT = 32768


def _with(previous: dict | None, entry: dict) -> list[dict]:
    """The previous server's entries with this language's replaced (or added), languages in a stable order."""
    kept = [m for m in (previous or {}).get("models") or [] if m.get("language") != entry["language"] and m.get("language")]
    kept = [m for m in kept if Path(m["gguf"]).is_file() and (not m.get("lora") or Path(m["lora"]).is_file())]
    return sorted(kept + [entry], key=lambda m: m["language"])


def _trained_from(store: ArtifactStore, gguf: Artifact) -> tuple[Path, Path]:
    """(the Hugging Face base folder, the adapter folder) a gguf version was made from."""
    from forge_assets.training.base_model import model_folder

    inputs = _read_json(gguf.path / "manifest.json").get("inputs") or {}
    adapter = store.get("adapter", gguf.language, inputs["adapter"])
    base = store.get("base_model", "all", inputs.get("base_model") or adapter.manifest()["inputs"]["base_model"])
    return model_folder(base.path), adapter.path


def served(store: ArtifactStore, cfg, extra: dict | None = None, language: str | None = None) -> clients.Endpoint:
    """What clients can reach now: every deployed tag with its context, from the one server's state (llama-server)
    or from each language's deployment record (ollama, vllm; mlx-lm: the one language's own server, default the
    first). `extra` adds records not yet written ({language: record})."""
    return targets.target(cfg.deploy.target).served(store, cfg, extra=extra, language=language)


def _entry_fim(entry: dict) -> str:
    """A server entry's FIM scheme: recorded, else read from its base GGUF's vocabulary (entries from before schemes)."""
    if entry.get("fim"):
        return entry["fim"]
    from forge_assets.fim_tokens import scheme_of_gguf

    return scheme_of_gguf(Path(entry["gguf"])).name if Path(entry.get("gguf") or "").is_file() else "qwen"


def gguf_path(art: Artifact) -> Path:
    """The GGUF file inside a gguf artifact version, or a clear error when it is missing."""
    found = sorted(art.path.glob("model-*.gguf"))
    if not found:
        raise ArtifactError(f"`gguf` version {art.version} for `{art.language}` holds no model-*.gguf under {art.path} "
                            f"(removed, or not a GGUF export). Fix: rematerialize `gguf` for `{art.language}`.")
    return found[0]


def key_scores(store: ArtifactStore, language: str, *, eval_scores: str | None = None, gguf: Artifact | str | None = None) -> dict:
    """The key scores of an eval_scores version (its scores.json) and of a gguf version (its manifest's figures).

    Only what exists is returned, as {name: number}: older artifacts lack newer scores, and a version removed by
    `forge gc` contributes nothing. When gguf is given without eval_scores, the eval_scores it was made from is used.
    """
    out: dict = {}
    gguf_man = {}
    if gguf is not None:
        art = gguf if isinstance(gguf, Artifact) else Artifact("gguf", language, gguf, store.folder("gguf", language) / gguf)
        gguf_man = _read_json(art.path / "manifest.json")
        eval_scores = eval_scores or (gguf_man.get("inputs") or {}).get("eval_scores")
    if eval_scores:
        scores = _read_json(store.folder("eval_scores", language) / eval_scores / "scores.json")
        out.update({k: scores[k] for k in EVAL_KEY_SCORES if _number(scores.get(k))})
    figures = gguf_man.get("figures") or {}
    out.update({k: figures[k] for k in GGUF_KEY_SCORES if _number(figures.get(k))})
    return out


def format_scores(scores: dict | None) -> str:
    """`ppl ratio 0.912, ppl 14.20, FIM EM 0.500, quant loss 1.30%` (names forge shows; missing ones left out)."""
    parts = []
    for k, line in _STATUS.items():
        v = (scores or {}).get(k)
        if _number(v):
            parts.append(line.format(v))
    return ", ".join(parts)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: Path) -> dict:
    return read_json_object(path) or {}


def deploy_gguf(store: ArtifactStore, cfg, language: str, gguf: Artifact, *, action: str = DEPLOY,
                log: Callable[[str], object] = print) -> tuple[Artifact, dict, bool]:
    """Serve a gguf version as `<tag_prefix>-<language>:<version[:12]>`; returns (deployment artifact, record, reused).

    Nothing is redone while the stable endpoint already answers with that tag (reused=True, no event). Otherwise the
    configured target serves it (llama.cpp: blue-green, the old server keeps serving if anything fails), the
    `deployment` artifact is written and promoted, and an `action` event (deploy or rollback) is logged.
    Raises what the target's errors() names (llama_server.DeployError, ollama_target.OllamaDeployError) when it cannot be served.
    """
    if action not in (DEPLOY, ROLLBACK):
        raise ValueError(f"action must be {DEPLOY!r} or {ROLLBACK!r}, not {action!r}")
    ensure_private_dir(store.root)  # the deployment state, logs and configs below it: the owner's alone
    d = cfg.deploy
    tag = f"{d.tag_prefix}-{language}:{gguf.version[:12]}"
    # The language's own serving settings (system prompt, sampling) by fingerprint: changing another language's, or the
    # approval mode, does not redeploy this one; changing its own does, with no retraining or export.
    key = input_key(gguf=gguf.version, code=CODE_VERSION,
                    deploy=d.model_dump(exclude={"max_perplexity_ratio", "system", "parameters", "languages", "approval"}),
                    generation=generation_fingerprint(cfg, language, gguf))
    # Reused only while the stable endpoint really answers with this tag (a dead server is redeployed).
    serving = targets.target(d.target)
    if (art := store.reusable("deployment", language, key)) is not None and serving.health(store, cfg, language, tag):
        log(f"{tag} is already deployed and answering; nothing to do.")
        return art, json.loads((art.path / "deployment.json").read_text()), True
    before = store.promoted("deployment", language)
    before_gguf = _read_json(before.path / "deployment.json").get("gguf") if before else None
    record = serving.deploy(store, cfg, language, gguf, tag, log)
    record.setdefault("fim", fim_scheme(gguf))  # the FIM tokens the tag's base has ("none": clients get no autocomplete)
    with store.write("deployment", language, {"input_key": key, "inputs": {"gguf": gguf.version}}) as out:  # promoted: it is serving
        (out.path / "deployment.json").write_text(json.dumps({k: v for k, v in record.items() if k != "smoke"}, indent=2, sort_keys=True))
        # Ready-to-paste client configurations for every tag now served (also printed by `forge client-config`).
        clients.write_all(served(store, cfg, extra={language: record}, language=language), out.path / "clients", language=language)
    inputs = _read_json(gguf.path / "manifest.json").get("inputs") or {}
    store.log_event("deployment", language, action, out.artifact.version, tag=tag, gguf=gguf.version,
                    adapter=inputs.get("adapter"), eval_scores=inputs.get("eval_scores"),
                    scores=key_scores(store, language, eval_scores=inputs.get("eval_scores"), gguf=gguf),
                    endpoint=record["endpoint"], target=d.target, previous_gguf=before_gguf,
                    **{"from": before.version if before else None})
    return out.artifact, record, False
