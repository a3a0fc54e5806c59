"""What `forge status` reports, as JSON-ready dicts: the shared endpoint (its tags, health and server) and, per
language, the promoted version of each asset, the deployment and its health (over HTTP where the target serves),
the perplexities, and for eval_scores and gguf the promoted and candidate versions with why a candidate was not
promoted (a rollback moved away from it, the gates it failed, or a quantization loss over today's limit)."""

from __future__ import annotations

import contextlib
import json

from forge_assets.artifacts import Artifact, ArtifactStore
from forge_assets.deploy import llama_server, targets
from forge_assets.deploy.history import deployed, when
from forge_assets.deploy.service import ENDPOINT, ROLLBACK, endpoint_dir, format_scores, key_scores

ASSETS = ("repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf")  # promoted versions shown per language
EXPLAINED = ("eval_scores", "gguf")  # promoted vs candidate, and why not promoted


def languages(store: ArtifactStore) -> list[str]:
    """The languages with a dataset or a (per-language, from before the shared endpoint) server state, sorted."""
    return sorted(({p.name for p in (store.root / "dataset").glob("*") if p.is_dir()}
                   | {p.parent.name for p in (store.root / "deployment").glob(f"*/{llama_server.STATE}")}) - {ENDPOINT})


def endpoint_status(store: ArtifactStore) -> dict | None:
    """The one endpoint every tag is served from, its health (over HTTP) and tags; None if it was never started."""
    shared = endpoint_dir(store)
    if not (shared / llama_server.STATE).is_file():
        return None
    state = llama_server.read_state(shared)
    h = llama_server.health(shared)
    return {"endpoint": state["endpoint"], "health": h["health"], "context": state.get("n_ctx"),
            "tags": [{"tag": m["id"], "language": m.get("language"), "adapter": m.get("lora"), "model": m["gguf"]}
                     for m in state.get("models") or []],
            "aliases": "<prefix>-<language>:latest names each language's current tag",
            "server": (state.get("server") or {}).get("pid"), "log": state.get("log")}


def language_status(store: ArtifactStore, cfg, language: str) -> dict:
    """The language's row: promoted versions, deployment record and health, perplexities, FIM skip, promotion."""
    row: dict = {asset: (a.version if (a := store.promoted(asset, language)) else None) for asset in ASSETS}
    current = deployed(store, language)
    record = current[1] if current else None
    if record:
        row["deployment"] = record
    if record or (store.folder("deployment", language) / llama_server.STATE).is_file():  # (a per-language server from before)
        row.update(targets.of_record(record).describe(store, language, record))  # health, over HTTP where the target serves
    scores = store.promoted("eval_scores", language)
    if scores:
        s = json.loads((scores.path / "scores.json").read_text())
        row["perplexity"] = {"base": s["base_perplexity"], "adapter": s["adapter_perplexity"]}
        if s.get("fim_skipped"):  # a base without FIM tokens: said where `forge run` ends, not only in its log
            row["fim"] = f"skipped: {s['fim_skipped']}"
    from forge_assets.deploy.approval import pending

    if (cand := pending(store, cfg, language)) is not None:  # deploy.approval: manual holds it back
        row["awaiting_approval"] = cand.as_dict()
    promo = {asset: info for asset in EXPLAINED if (info := promotion(store, cfg, language, asset))}
    if promo:
        row["promotion"] = promo
    return {"language": language, **row}


def promotion(store: ArtifactStore, cfg, language: str, asset: str) -> dict | None:
    """The promoted and candidate versions of eval_scores or gguf with their key scores, and why a candidate was not promoted."""
    promoted, candidate = store.promoted(asset, language), store.candidate(asset, language)
    if promoted is None and candidate is None:
        return None

    def scores(art: Artifact) -> dict:
        return key_scores(store, language, **({"eval_scores": art.version} if asset == "eval_scores" else {"gguf": art}))

    out: dict = {"promoted": promoted.version if promoted else None}
    if promoted is not None:
        out["promoted_scores"] = format_scores(scores(promoted))
    out["candidate"] = candidate.version if candidate else None
    if candidate is not None and (promoted is None or candidate.version != promoted.version):
        out["candidate_scores"] = format_scores(scores(candidate))
        out["not_promoted"] = f"candidate {candidate.version} was not promoted: {why_not_promoted(store, cfg, language, candidate)}"
    return out


def why_not_promoted(store: ArtifactStore, cfg, language: str, art: Artifact) -> str:
    """A rollback moved away from it, or the checks it failed (a `gates` list of {name, passed, message} in its
    scores.json or manifest), or, for a GGUF, a quantization loss over today's limit."""
    if art.version in store.rolled_back(art.asset, language):
        at = next((when(ev.get("at")) for ev in reversed(store.history(art.asset, language))
                   if ev.get("event") == ROLLBACK and ev.get("from") == art.version), "?")
        return (f"`forge rollback` moved away from it ({at} UTC); serve it again with "
                f"`forge rollback --language {language} --to {art.version[:12]}`")
    failed = []
    for path in (art.path / "scores.json", art.path / "manifest.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        gates = (data.get("gates") or (data.get("figures") or {}).get("gates") or []) if isinstance(data, dict) else []
        for g in gates if isinstance(gates, list) else []:
            if isinstance(g, dict) and g.get("passed") is False:
                failed.append(f"{g.get('name', '?')}: {g.get('message', 'failed')}")
    if failed:
        return "; ".join(dict.fromkeys(failed))
    if art.asset == "gguf":
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):  # (a manifest without figures: no loss)
            loss, limit = art.manifest()["figures"].get("quantization_loss_pct"), getattr(cfg.gates, "max_quantization_loss_pct", None)
            if loss is not None and limit is not None and float(loss) > float(limit):
                return (f"quantization_loss: its held-out perplexity is {float(loss):.2f}% above the reference's (unquantized base GGUF + LoRA) "
                        f"(limit gates.max_quantization_loss_pct = {limit})")
    return "it records no failed check (its run may not have finished; see the run in Dagster)"
