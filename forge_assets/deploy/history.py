"""What was served, and which GGUF a rollback serves: read from the artifact store's history, nothing started.

The deployment partition's history.jsonl records each `deploy` and `rollback` (service.deploy_gguf writes them);
gguf's records its `promote` and `rollback` events. From these:

- deployed(): the promoted `deployment` version and its deployment.json record (what serves now);
- served_events(): the deploys and rollbacks of a language, oldest first (`forge history`);
- previous_version(): the GGUF a plain `forge rollback` serves, the newest one served before the current one that no
  rollback moved away from;
- resolve_version(): the stored GGUF a `forge rollback --to` names (a full version, a unique prefix, or a tag), so a
  rollback can go forward again;
- rollback_target(): previous_version() as a stored artifact, or a RollbackError saying its files are gone;
- rollback_protected(): what `forge gc` keeps so that a plain rollback still works.

Every refusal is a RollbackError whose message names the cause and, after `Fix:`, what to do.
"""

from __future__ import annotations

import contextlib
import json

from forge_assets.artifacts import Artifact, ArtifactError, ArtifactStore
from forge_assets.deploy.service import DEPLOY, ROLLBACK

RECORD = "deployment.json"  # in each `deployment` version: the target, tag, endpoint and GGUF it serves


class RollbackError(RuntimeError):
    """A rollback cannot be done; the message names why and, after `Fix:`, what to do."""


def when(at: str | None) -> str:
    """A history event's UTC time as `YYYY-MM-DD HH:MM:SS` ("?" when it has none)."""
    return (at or "?")[:19].replace("T", " ")


def deployed(store: ArtifactStore, language: str) -> tuple[Artifact, dict] | None:
    """The promoted `deployment` version of the language and its deployment.json record, or None if nothing is deployed."""
    dep = store.promoted("deployment", language)
    if dep is None:
        return None
    return dep, json.loads((dep.path / RECORD).read_text())


def served_events(store: ArtifactStore, language: str) -> list[dict]:
    """The language's `deploy` and `rollback` events, oldest first."""
    return [ev for ev in store.history("deployment", language) if ev.get("event") in (DEPLOY, ROLLBACK)]


def decision_events(store: ArtifactStore, language: str) -> list[dict]:
    """The language's deploys, rollbacks and approval decisions (awaiting, approve, reject), oldest first."""
    return [ev for ev in store.history("deployment", language) if ev.get("event") in (DEPLOY, ROLLBACK, "awaiting", "approve", "reject")]


def stored_list(store: ArtifactStore, language: str, exclude: str | None = None) -> str:
    """The stored gguf versions, newest first, as `<version[:12]> (<created>)`, for an error's Fix; "none" if there are none."""
    arts = [a for a in store.versions("gguf", language) if a.version != exclude]
    return ", ".join(f"{a.version[:12]} ({when(a.manifest().get('created_at'))})" for a in reversed(arts)) or "none"


def resolve_version(store: ArtifactStore, tag_prefix: str, language: str, want: str) -> Artifact:
    """The stored gguf version named by a full version, a unique prefix, or a tag `<tag_prefix>-<language>:<version>`."""
    text = want.strip()
    if ":" in text:
        name, _, text = text.rpartition(":")
        if name != f"{tag_prefix}-{language}":
            raise RollbackError(f"{want!r} is not a tag of `{language}` (its tags are {tag_prefix}-{language}:<version>). "
                                f"Fix: pass a `{language}` gguf version, a unique prefix of one, or its tag.")
    text = text.lower()
    matches = [a for a in store.versions("gguf", language) if text and a.version.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RollbackError(f"{want!r} matches {len(matches)} `gguf` versions of `{language}`: "
                            f"{', '.join(a.version for a in matches)}. Fix: pass more characters of the one you mean.")
    known = {ev.get("version") for ev in store.history("gguf", language)} | {ev.get("from") for ev in store.history("gguf", language)}
    known |= {ev.get("gguf") for ev in served_events(store, language)}
    gone = sorted(v for v in known if isinstance(v, str) and text and v.startswith(text))
    if gone:
        raise RollbackError(f"`gguf` version {gone[0]} of `{language}` was served or promoted before, but its files are no longer under "
                            f"{store.folder('gguf', language)} (removed by `forge gc`). Fix: roll back to a version still stored "
                            f"(`forge rollback --language {language} --to VERSION`; stored: {stored_list(store, language)}), "
                            "and keep more versions next time with `forge gc --keep N`.")
    raise RollbackError(f"no `gguf` version of `{language}` matches {want!r} under {store.folder('gguf', language)}. "
                        f"Fix: pass one of the stored versions (newest first: {stored_list(store, language)}); "
                        f"`forge history --language {language}` lists what was served.")


def previous_version(store: ArtifactStore, language: str, current: str) -> str:
    """The newest gguf version served before `current` that no rollback moved away from (deployment history; else gguf's promotions)."""
    rolled = store.rolled_back("gguf", language)
    served = [ev.get("gguf") for ev in served_events(store, language)]
    if not any(served):  # deployments made before the deployment history existed: the GGUFs promoted over time
        served = [ev.get("version") for ev in store.history("gguf", language) if ev.get("event") in ("promote", ROLLBACK)]
    if current in served:  # only what was served before the current one became current
        served = served[:len(served) - 1 - served[::-1].index(current)]
    for version in reversed(served):
        if isinstance(version, str) and version != current and version not in rolled:
            return version
    skipped = sorted({v for v in served if v in rolled and v != current})
    note = (f" ({', '.join(v[:12] for v in skipped)} {'was' if len(skipped) == 1 else 'were'} rolled back from, "
            "so not chosen again on its own)") if skipped else ""
    raise RollbackError(f"no earlier `gguf` version of `{language}` was served before {current[:12]}{note}. Fix: name one with "
                        f"`forge rollback --language {language} --to VERSION` (stored: {stored_list(store, language, exclude=current)}).")


def rollback_target(store: ArtifactStore, language: str, current: str) -> Artifact:
    """The stored gguf artifact a plain `forge rollback` serves in place of `current`."""
    version = previous_version(store, language, current)
    try:
        return store.get("gguf", language, version)
    except ArtifactError:
        raise RollbackError(f"the GGUF served before {current[:12]} is `gguf` version {version}, but its files are no longer under "
                            f"{store.folder('gguf', language)} (removed by `forge gc`). Fix: roll back to a version still stored "
                            f"(`forge rollback --language {language} --to VERSION`; stored: {stored_list(store, language, exclude=current)}), "
                            "and keep more versions next time with `forge gc --keep N`.") from None


def rollback_protected(store: ArtifactStore) -> set[tuple[str, str, str]]:
    """(asset, language, version) of each language's deployed version and of the GGUF a plain `forge rollback` would
    serve again: what `forge gc` must keep (with what those were made from, which the store's gc follows)."""
    protect: set[tuple[str, str, str]] = set()
    for lang in store.languages("deployment"):
        dep = store.promoted("deployment", lang)
        if dep is None:
            continue
        protect.add(("deployment", lang, dep.version))
        with contextlib.suppress(RollbackError, OSError, ValueError, KeyError):
            protect.add(("gguf", lang, previous_version(store, lang, json.loads((dep.path / RECORD).read_text())["gguf"])))
    return protect


def record_rollback(store: ArtifactStore, language: str, target: Artifact, current: str, tag: str, promoted: Artifact | None) -> None:
    """After `target` serves (as `tag`) in place of `current`: point gguf's `promoted` at it, so a later `deployment`
    run does not undo the rollback, and log gguf's `rollback` event (with `promoted_before`, the version `promoted`
    named, when that was not the one serving)."""
    store.promote(target, record=False)
    store.log_event("gguf", language, ROLLBACK, target.version, tag=tag,
                    **{"from": current}, **({"promoted_before": promoted.version} if promoted and promoted.version != current else {}))
