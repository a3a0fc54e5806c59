"""`deploy.approval: manual`: a candidate that passed every gate waits for a person before it is served.

The queue is the deployment partition's history.jsonl (the same file `forge history` reads):

- the `deployment` step of an *automated* run (`forge run`, the push sensor, the schedule) does not serve the candidate
  under manual approval: `hold` logs an `awaiting` event for it (once per version) and what serves keeps serving;
- `pending` is the candidate waiting now: the newest `awaiting` version, while it is still gguf's promoted version (a
  newer candidate replaces an older one; a rollback moves `promoted` and so empties the queue), not served, not rejected;
- `approve` serves it through the same blue-green, smoke-tested path as a deploy (`service.deploy_gguf`) and logs an
  `approve` event; materializing the language's `deployment` partition from the Dagster UI (a run no automation
  started) is the same approval;
- `reject` logs a `reject` event with the reason; the candidate leaves the queue and the old model keeps serving.

Every refusal is an ApprovalError whose message names the cause and, after `Fix:`, what to do.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from forge_assets.artifacts import Artifact, ArtifactError, ArtifactStore

AWAITING, APPROVE, REJECT = "awaiting", "approve", "reject"
# Run tags (besides `forge run`'s runs.PGID_TAG) that mark a run no person asked for now: the push sensor and the schedule.
AUTOMATION_TAGS = ("dagster/sensor_name", "dagster/schedule_name")


class ApprovalError(RuntimeError):
    """An approval or rejection cannot be done; the message names why and, after `Fix:`, what to do."""


@dataclass(frozen=True)
class Candidate:
    """A gguf version waiting for approval."""

    language: str
    version: str
    tag: str
    since: str  # when it was first held (UTC ISO 8601)
    report: Path | None  # the validation report of the evaluation it was made from
    serving: str | None  # the tag serving meanwhile, if any

    def as_dict(self) -> dict:
        return {"version": self.version, "tag": self.tag, "since": self.since, "report": str(self.report) if self.report else None,
                "serving": self.serving, "approve": f"forge approve --language {self.language}",
                "reject": f"forge reject --language {self.language} --reason \"...\""}


def automated(tags: Mapping[str, str]) -> bool:
    """Whether a run was started by automation (forge run, the sensor, the schedule) rather than by a person."""
    from forge_assets.runs import PGID_TAG

    return any(t in tags for t in (PGID_TAG, *AUTOMATION_TAGS))


def tag_of(cfg, language: str, version: str) -> str:
    return f"{cfg.deploy.tag_prefix}-{language}:{version[:12]}"


def report_of(store: ArtifactStore, gguf: Artifact) -> Path | None:
    """The validation report of the evaluation a gguf version was made from."""
    from forge_assets.evaluation.report import REPORT

    scores = (gguf.manifest().get("inputs") or {}).get("eval_scores")
    if not scores:
        return None
    try:
        path = store.get("eval_scores", gguf.language, scores).path / REPORT
    except ArtifactError:
        return None
    return path if path.is_file() else None


def _serving(store: ArtifactStore, language: str) -> dict | None:
    from forge_assets.deploy.history import deployed

    current = deployed(store, language)
    return current[1] if current else None


def hold(store: ArtifactStore, cfg, language: str, gguf: Artifact) -> Candidate:
    """Keep a candidate out of service until it is approved: log `awaiting` (once per version) and return it."""
    events = store.history("deployment", language)
    held = [ev for ev in events if ev.get("event") == AWAITING and ev.get("version") == gguf.version]
    serving = _serving(store, language)
    report = report_of(store, gguf)
    if not held:
        ev = store.log_event("deployment", language, AWAITING, gguf.version, tag=tag_of(cfg, language, gguf.version), gguf=gguf.version,
                             report=str(report) if report else None, serving=serving.get("tag") if serving else None)
        since = ev["at"]
    else:
        since = held[0]["at"]
    return Candidate(language, gguf.version, tag_of(cfg, language, gguf.version), since, report,
                     serving.get("tag") if serving else None)


def pending(store: ArtifactStore, cfg, language: str) -> Candidate | None:
    """The candidate awaiting approval now, or None."""
    events = store.history("deployment", language)
    awaiting = [ev for ev in events if ev.get("event") == AWAITING]
    if not awaiting:
        return None
    newest = awaiting[-1]
    version = newest.get("version")
    promoted = store.promoted("gguf", language)
    if promoted is None or promoted.version != version:
        return None  # a newer candidate (or a rollback) took its place
    if any(ev.get("event") == REJECT and ev.get("version") == version for ev in events):
        return None
    serving = _serving(store, language)
    if serving and serving.get("gguf") == version:
        return None
    first = next(ev for ev in awaiting if ev.get("version") == version)
    return Candidate(language, version, tag_of(cfg, language, version), first["at"], report_of(store, promoted),
                     serving.get("tag") if serving else None)


def _named(store: ArtifactStore, cfg, language: str, version: str | None, verb: str) -> tuple[Candidate, Artifact]:
    """The pending candidate, checked against the version the user named (if any)."""
    from forge_assets.deploy.history import RollbackError, resolve_version

    cand = pending(store, cfg, language)
    named = None
    if version is not None:
        try:
            named = resolve_version(store, cfg.deploy.tag_prefix, language, version)
        except RollbackError as exc:
            raise ApprovalError(str(exc).replace("forge rollback", f"forge {verb}")) from None
    serving = _serving(store, language)
    if cand is None:
        events = store.history("deployment", language)
        last = next((ev for ev in reversed(events) if ev.get("event") in (AWAITING, APPROVE, REJECT, "deploy", "rollback")), None)
        if last is not None and last.get("event") == AWAITING and not (store.folder("gguf", language) / str(last.get("version"))).is_dir():
            raise ApprovalError(f"the candidate `gguf` {last.get('version')} of `{language}` is no longer stored under "
                                f"{store.folder('gguf', language)} (removed by `forge gc`). Fix: run `forge run --language "
                                f"{language}` to make a new candidate.")
        if named is not None and serving and serving.get("gguf") == named.version:
            raise ApprovalError(f"`gguf` {named.version[:12]} of `{language}` already serves as {serving.get('tag')}; nothing to {verb}. "
                                f"Fix: nothing to do (`forge status --language {language}` shows it).")
        raise ApprovalError(f"no candidate of `{language}` awaits approval (deploy.approval is {cfg.deploy.approval!r}). Fix: run "
                            f"`forge run --language {language}` to produce one; `forge history --language {language}` shows what "
                            "was approved, rejected and served.")
    if named is not None and named.version != cand.version:
        raise ApprovalError(f"`gguf` {named.version[:12]} of `{language}` is no longer the candidate: {cand.version[:12]} "
                            f"({cand.tag}, waiting since {cand.since[:19].replace('T', ' ')} UTC) superseded it. Fix: "
                            f"`forge {verb} --language {language}` for the newer one; to serve an older version, "
                            f"`forge rollback --language {language} --to {named.version[:12]}`.")
    try:
        art = store.get("gguf", language, cand.version)
    except ArtifactError:
        raise ApprovalError(f"the candidate `gguf` {cand.version} of `{language}` is no longer stored under "
                            f"{store.folder('gguf', language)} (removed by `forge gc`). Fix: run `forge run --language "
                            f"{language}` to make a new candidate.") from None
    return cand, art


def approve(store: ArtifactStore, cfg, language: str, version: str | None = None,
            log: Callable[[str], object] = print) -> tuple[Artifact, dict]:
    """Serve the pending candidate (blue-green and smoke-tested, as a deploy) after checking today's gates again;
    log `approve`. Returns the deployment artifact and its record."""
    from forge_assets.assets.common import gated_adapter
    from forge_assets.deploy.service import DEPLOY, deploy_gguf
    from forge_assets.evaluation.gate import judge_gguf

    cand, art = _named(store, cfg, language, version, "approve")
    try:
        gated_adapter(store, language, cfg.gates, eval_version=art.manifest()["inputs"].get("eval_scores"))
    except Exception as exc:  # dagster.Failure or ArtifactError, with its own description
        raise ApprovalError(f"the candidate {cand.tag} no longer passes today's gates: {getattr(exc, 'description', None) or exc}. "
                            "Fix: run `forge run` again, or change `gates:` in forge.yaml.") from None
    verdict = judge_gguf(art.manifest().get("figures", {}), cfg.gates)
    if not verdict.passed:
        raise ApprovalError(f"the candidate {cand.tag} no longer passes {verdict.name}: {verdict.message}. Fix: run `forge run` "
                            "again, or change `gates:` in forge.yaml.")
    dep, record, _ = deploy_gguf(store, cfg, language, art, action=DEPLOY, log=log)
    record_approval(store, language, art.version, record["tag"], cand, by=_user())
    return dep, record


def record_approval(store: ArtifactStore, language: str, version: str, tag: str, cand: Candidate, by: str) -> None:
    """Log the `approve` event of a candidate that now serves (by `forge approve`, or a run started from the UI)."""
    store.log_event("deployment", language, APPROVE, version, tag=tag, gguf=version, by=by, waited_since=cand.since)


def reject(store: ArtifactStore, cfg, language: str, reason: str, version: str | None = None) -> Candidate:
    """Record that the pending candidate will not be served, and why; what serves keeps serving."""
    if not reason.strip():
        raise ApprovalError("a rejection needs a reason. Fix: pass --reason \"what is wrong with it\".")
    cand, _ = _named(store, cfg, language, version, "reject")
    store.log_event("deployment", language, REJECT, cand.version, tag=cand.tag, gguf=cand.version, reason=reason.strip(), by=_user())
    return cand


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"
