"""forge_assets.deploy.history on real artifact stores in tmp_path: which GGUF a `forge rollback` serves (back, and
forward again with --to), what `forge gc` keeps for it, and the errors when it cannot. No server is started: the
deployments are recorded as service.deploy_gguf records them (a `deployment` version with deployment.json, and a
`deploy` or `rollback` event in the deployment history)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from forge_assets.artifacts import ArtifactStore
from forge_assets.deploy.history import (RollbackError, deployed, previous_version, record_rollback, resolve_version, rollback_protected,
                                         rollback_target, served_events, stored_list, when)

LANG = "python"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _gguf(store: ArtifactStore, label: str, promote: bool = True):
    with store.write("gguf", LANG, {"inputs": {"adapter": "a0"}}, promote=promote) as out:
        (out.path / "model-Q8_0.gguf").write_text(f"gguf {label}\n")
    time.sleep(0.01)  # versions are ordered by their manifest's mtime
    return out.artifact


def _serve(store: ArtifactStore, gguf, event: str = "deploy", history: bool = True):
    """Record `gguf` as deployed: a promoted `deployment` version and (history=True) its event."""
    tag = f"forge-{LANG}:{gguf.version[:12]}"
    with store.write("deployment", LANG, {"inputs": {"gguf": gguf.version}}) as out:
        (out.path / "deployment.json").write_text(json.dumps({"target": "llama-server", "tag": tag, "gguf": gguf.version,
                                                              "endpoint": "http://127.0.0.1:1/v1"}))
    if history:
        store.log_event("deployment", LANG, event, out.artifact.version, tag=tag, gguf=gguf.version)
    return out.artifact


def _roll_back(store: ArtifactStore, target, current) -> None:
    """What `forge rollback` records once `target` serves in place of `current`."""
    _serve(store, target, event="rollback")
    record_rollback(store, LANG, target, current.version, f"forge-{LANG}:{target.version[:12]}", store.promoted("gguf", LANG))


def test_deployed_and_served_events(store: ArtifactStore):
    assert deployed(store, LANG) is None and served_events(store, LANG) == []
    a, b = _gguf(store, "A"), _gguf(store, "B")
    _serve(store, a)
    dep_b = _serve(store, b)
    store.log_event("deployment", LANG, "note", dep_b.version)  # other events are not deploys
    art, record = deployed(store, LANG)
    assert art.version == dep_b.version and record["gguf"] == b.version and record["tag"] == f"forge-{LANG}:{b.version[:12]}"
    assert [(ev["event"], ev["gguf"]) for ev in served_events(store, LANG)] == [("deploy", a.version), ("deploy", b.version)]


def test_previous_version_goes_back_once_then_skips_what_was_rolled_back_from(store: ArtifactStore):
    a, b = _gguf(store, "A"), _gguf(store, "B")
    _serve(store, a)
    _serve(store, b)
    assert previous_version(store, LANG, b.version) == a.version
    assert rollback_target(store, LANG, b.version).version == a.version

    _roll_back(store, a, b)  # A serves again; B was rolled back from
    assert store.promoted("gguf", LANG).version == a.version and store.rolled_back("gguf", LANG) == {b.version}
    ev = store.history("gguf", LANG)[-1]
    assert (ev["event"], ev["version"], ev["from"]) == ("rollback", a.version, b.version)
    # Before A's rollback, A was first served; nothing earlier, and B (served after A) is not "before" the current A.
    with pytest.raises(RollbackError, match=f"no earlier `gguf` version of `{LANG}` was served before {a.version[:12]}") as err:
        previous_version(store, LANG, a.version)
    assert f"(stored: {b.version[:12]}" in str(err.value) and "Fix: name one with" in str(err.value)

    # Forward again (--to B): then a plain rollback would not choose A, which was rolled back from, on its own.
    _roll_back(store, b, a)
    assert store.rolled_back("gguf", LANG) == {a.version}
    with pytest.raises(RollbackError, match=rf"\({a.version[:12]} was rolled back from, so not chosen again on its own\)"):
        previous_version(store, LANG, b.version)


def test_previous_version_without_a_deployment_history_uses_ggufs_promotions(store: ArtifactStore):
    a, b, c = _gguf(store, "A"), _gguf(store, "B"), _gguf(store, "C")
    _serve(store, b, history=False)  # deployed before the deployment history existed
    assert served_events(store, LANG) == []
    assert previous_version(store, LANG, b.version) == a.version  # the promotion before B's, not C (promoted after it)
    assert previous_version(store, LANG, c.version) == b.version


def test_rollback_target_says_when_the_previous_gguf_was_removed(store: ArtifactStore):
    a, b = _gguf(store, "A"), _gguf(store, "B")
    _serve(store, a)
    _serve(store, b)
    shutil.rmtree(a.path)
    assert previous_version(store, LANG, b.version) == a.version  # still the history's answer
    with pytest.raises(RollbackError) as err:
        rollback_target(store, LANG, b.version)
    msg = str(err.value)
    assert f"the GGUF served before {b.version[:12]} is `gguf` version {a.version}, but its files are no longer under" in msg
    assert "Fix: roll back to a version still stored" in msg and "stored: none)" in msg  # B, the current one, is left out


def test_resolve_version_by_version_prefix_and_tag(store: ArtifactStore):
    a, b = _gguf(store, "A"), _gguf(store, "B")
    assert resolve_version(store, "forge", LANG, a.version).version == a.version
    assert resolve_version(store, "forge", LANG, f"  {b.version[:8].upper()} ").version == b.version  # trimmed, any case
    assert resolve_version(store, "forge", LANG, f"forge-{LANG}:{b.version[:12]}").version == b.version
    assert resolve_version(store, "mine", LANG, f"mine-{LANG}:{a.version[:12]}").version == a.version  # the configured prefix

    with pytest.raises(RollbackError, match=f"is not a tag of `{LANG}` \\(its tags are forge-{LANG}:<version>\\)"):
        resolve_version(store, "forge", LANG, f"forge-rust:{a.version[:12]}")
    with pytest.raises(RollbackError) as err:
        resolve_version(store, "forge", LANG, "zz")  # hex versions never start with z
    assert f"no `gguf` version of `{LANG}` matches 'zz'" in str(err.value)
    assert f"newest first: {b.version[:12]} (" in str(err.value) and f"), {a.version[:12]} (" in str(err.value)
    with pytest.raises(RollbackError, match="no `gguf` version"):
        resolve_version(store, "forge", LANG, "")  # an empty prefix names nothing


def test_resolve_version_refuses_an_ambiguous_prefix(store: ArtifactStore):
    arts = [_gguf(store, str(i)) for i in range(17)]  # 17 versions, 16 hex digits: two share their first one
    first = [a.version[0] for a in arts]
    shared = next(c for c in first if first.count(c) > 1)
    with pytest.raises(RollbackError) as err:
        resolve_version(store, "forge", LANG, shared)
    assert f"{shared!r} matches {first.count(shared)} `gguf` versions of `{LANG}`" in str(err.value)
    assert "Fix: pass more characters of the one you mean." in str(err.value)


def test_resolve_version_names_a_version_removed_since(store: ArtifactStore):
    a, b = _gguf(store, "A"), _gguf(store, "B")
    _serve(store, a)
    _serve(store, b)
    shutil.rmtree(a.path)
    with pytest.raises(RollbackError) as err:
        resolve_version(store, "forge", LANG, a.version[:10])
    msg = str(err.value)
    assert f"`gguf` version {a.version} of `{LANG}` was served or promoted before, but its files are no longer under" in msg
    assert "removed by `forge gc`" in msg and f"stored: {b.version[:12]} (" in msg


def test_rollback_protected_keeps_the_deployment_and_what_a_rollback_serves(store: ArtifactStore):
    assert rollback_protected(store) == set()
    a, b = _gguf(store, "A"), _gguf(store, "B")
    dep_a = _serve(store, a)
    dep_b = _serve(store, b)
    assert rollback_protected(store) == {("deployment", LANG, dep_b.version), ("gguf", LANG, a.version)}

    removed = store.gc(0, protect=rollback_protected(store))
    assert a.path.is_dir() and b.path.is_dir()  # A: what a rollback serves; B: promoted
    assert [(r.asset, r.version) for r in removed] == [("deployment", dep_a.version)]

    _roll_back(store, a, b)  # now nothing earlier than A may be served: only the deployment is protected
    assert {p[0] for p in rollback_protected(store)} == {"deployment"}


def test_stored_list_and_when(store: ArtifactStore):
    assert stored_list(store, LANG) == "none"
    a, b = _gguf(store, "A"), _gguf(store, "B")
    assert stored_list(store, LANG, exclude=b.version) == f"{a.version[:12]} ({when(a.manifest()['created_at'])})"
    assert stored_list(store, LANG).startswith(f"{b.version[:12]} (")
    assert when("2026-01-02T03:04:05.123456Z") == "2026-01-02 03:04:05" and when(None) == "?"
