"""Serving a stored GGUF version: the one path the `deployment` asset and `forge rollback` share.

deploy_gguf() serves a gguf artifact version on the configured target (a llama.cpp server behind the Forge
router, blue-green with its smoke test, or Ollama), records it as the `deployment` artifact (promoted: it is
what serves) and appends a `deploy` or `rollback` event to the deployment partition's history.jsonl with the
tag, the GGUF, the adapter and eval_scores it was made from, and their key scores.

It checks no quality gate: the asset re-checks the gate before calling it, and a rollback serves a version
that was deployed before.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from forge_assets.artifacts import Artifact, ArtifactError, ArtifactStore, input_key
from forge_assets.deploy import llama_server, ollama_target
from forge_assets.deploy.ports import port_for

CODE_VERSION = "1"  # the deployment asset's code version: part of the deployment artifact's input key
DEPLOY, ROLLBACK = "deploy", "rollback"

# The scores `forge status`, `forge history` and history events show, in this order, with a short label.
EVAL_KEY_SCORES = {
    "perplexity_ratio": "ppl ratio",
    "adapter_perplexity": "ppl",
    "adapter_fim_exact_match": "FIM EM",
    "adapter_fim_edit_similarity": "FIM sim",
    "adapter_humaneval_pass_at_1": "HumanEval@1",
    "adapter_codebleu": "CodeBLEU",
}
GGUF_KEY_SCORES = {"quantization_loss_pct": "quant loss %"}


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
    for k, label in {**EVAL_KEY_SCORES, **GGUF_KEY_SCORES}.items():
        v = (scores or {}).get(k)
        if not _number(v):
            continue
        if k == "quantization_loss_pct":
            parts.append(f"quant loss {v:.2f}%")
        elif k == "adapter_perplexity":
            parts.append(f"{label} {v:.2f}")
        else:
            parts.append(f"{label} {v:.3f}")
    return ", ".join(parts)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def deploy_gguf(store: ArtifactStore, cfg, language: str, gguf: Artifact, *, action: str = DEPLOY,
                log: Callable[[str], object] = print) -> tuple[Artifact, dict, bool]:
    """Serve a gguf version as `<tag_prefix>-<language>:<version[:12]>`; returns (deployment artifact, record, reused).

    Nothing is redone while the stable endpoint already answers with that tag (reused=True, no event). Otherwise the
    configured target serves it (llama.cpp: blue-green, the old server keeps serving if anything fails), the
    `deployment` artifact is written and promoted, and an `action` event (deploy or rollback) is logged.
    Raises llama_server.DeployError / ollama_target.OllamaDeployError when it cannot be served.
    """
    if action not in (DEPLOY, ROLLBACK):
        raise ValueError(f"action must be {DEPLOY!r} or {ROLLBACK!r}, not {action!r}")
    d = cfg.deploy
    tag = f"{d.tag_prefix}-{language}:{gguf.version[:12]}"
    state_dir = store.folder("deployment", language)
    key = input_key(gguf=gguf.version, deploy=d.model_dump(exclude={"max_perplexity_ratio"}), code=CODE_VERSION)
    # Reused only while the stable endpoint really answers with this tag (a dead server is redeployed).
    if (art := store.reusable("deployment", language, key)) is not None and (d.target == "ollama" or llama_server.serving(state_dir, tag)):
        log(f"{tag} is already deployed and answering; nothing to do.")
        return art, json.loads((art.path / "deployment.json").read_text()), True
    before = store.promoted("deployment", language)
    before_gguf = _read_json(before.path / "deployment.json").get("gguf") if before else None
    model_file = gguf_path(gguf)
    if d.target == "llama-server":
        state = llama_server.deploy(model_file, tag, d.host, port_for(store.root, language, d.port), state_dir)
        record = {"target": d.target, "tag": tag, "endpoint": state["endpoint"], "gguf": gguf.version, "smoke": state["smoke"]}
    else:
        state = ollama_target.deploy(model_file, tag, gguf.path, d.ollama_host, latest_tag=f"{d.tag_prefix}-{language}:latest")
        record = {"target": d.target, "tag": tag, "endpoint": state["endpoint"], "gguf": gguf.version, "smoke": state["smoke"],
                  "latest_tag": state["latest_tag"]}
    with store.write("deployment", language, {"input_key": key, "inputs": {"gguf": gguf.version}}) as out:  # promoted: it is serving
        (out.path / "deployment.json").write_text(json.dumps({k: v for k, v in record.items() if k != "smoke"}, indent=2, sort_keys=True))
    inputs = _read_json(gguf.path / "manifest.json").get("inputs") or {}
    store.log_event("deployment", language, action, out.artifact.version, tag=tag, gguf=gguf.version,
                    adapter=inputs.get("adapter"), eval_scores=inputs.get("eval_scores"),
                    scores=key_scores(store, language, eval_scores=inputs.get("eval_scores"), gguf=gguf),
                    endpoint=record["endpoint"], target=d.target, previous_gguf=before_gguf,
                    **{"from": before.version if before else None})
    return out.artifact, record, False
