"""The artifact store's history: promote events only when `promoted` moves, rollbacks, and gc keeping the file."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from forge_assets.artifacts import HISTORY, ArtifactStore


def _put(store: ArtifactStore, body: str, promote: bool = True, asset: str = "gguf"):
    with store.write(asset, "python", {"inputs": {}}, promote=promote) as out:
        (out.path / "model-Q8_0.gguf").write_text(body)
    time.sleep(0.01)  # versions() orders by manifest mtime
    return out.artifact


def _events(store: ArtifactStore, asset: str = "gguf") -> list[tuple]:
    return [(ev["event"], ev["version"], ev.get("from")) for ev in store.history(asset, "python")]


def test_promote_events_are_logged_only_when_promoted_moves(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    a = _put(store, "a")  # write(promote=True) promotes through the same path
    assert _events(store) == [("promote", a.version, None)]
    b = _put(store, "b", promote=False)  # a candidate only
    assert _events(store) == [("promote", a.version, None)]
    store.promote(a)  # re-pointing at the version it already names
    store.mark_candidate(a)
    assert len(store.history("gguf", "python")) == 1
    store.promote(b)
    _put(store, "b")  # the same content again: same version, already promoted
    store.promote(b, record=False)
    store.promote(a, record=False)  # the caller records its own event
    assert _events(store) == [("promote", a.version, None), ("promote", b.version, a.version)]

    ev = store.history("gguf", "python")[1]
    assert list(ev)[:3] == ["at", "event", "version"] and ev["at"].endswith("Z") and ev["at"][:4].isdigit()
    line = (tmp_path / "gguf" / "python" / HISTORY).read_text().splitlines()[1]
    assert json.loads(line) == ev  # one JSON object per line


def test_log_event_fields_and_unparsable_lines(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    rec = store.log_event("deployment", "python", "deploy", "v1", tag="forge-python:v1", scores={"perplexity_ratio": 0.9}, at="not mine")
    assert rec["event"] == "deploy" and rec["version"] == "v1" and rec["tag"] == "forge-python:v1" and rec["at"] != "not mine"
    path = tmp_path / "deployment" / "python" / HISTORY
    with open(path, "a") as fh:
        fh.write('{"event": "deploy", "version": "v2", "at": "x"\n')  # cut short (a crash mid-line)
        fh.write("not json\n[1, 2]\n\n")
    store.log_event("deployment", "python", "rollback", "v1", **{"from": "v2"})
    assert [(e["event"], e["version"]) for e in store.history("deployment", "python")] == [("deploy", "v1"), ("rollback", "v1")]
    assert store.history("deployment", "rust") == []


def test_concurrent_writers_never_interleave_lines(tmp_path: Path):
    script = ("import sys; from forge_assets.artifacts import ArtifactStore; s = ArtifactStore(sys.argv[1])\n"
              "for i in range(200): s.log_event('gguf', 'python', 'deploy', sys.argv[2] + str(i), pad='x' * 3000)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"w{n}-"]) for n in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    lines = (tmp_path / "gguf" / "python" / HISTORY).read_text().splitlines()
    assert len(lines) == 800 and all(json.loads(line)["pad"] == "x" * 3000 for line in lines)
    for n in range(4):  # each writer's events in its own order
        mine = [json.loads(line)["version"] for line in lines if json.loads(line)["version"].startswith(f"w{n}-")]
        assert mine == [f"w{n}-{i}" for i in range(200)]


def test_rolled_back_versions_until_chosen_again(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    assert store.rolled_back("gguf", "python") == set()
    store.log_event("gguf", "python", "promote", "A")
    store.log_event("gguf", "python", "promote", "B", **{"from": "A"})  # a promotion is not a rollback
    assert store.rolled_back("gguf", "python") == set()
    store.log_event("gguf", "python", "rollback", "A", **{"from": "B"})
    assert store.rolled_back("gguf", "python") == {"B"}
    store.log_event("gguf", "python", "promote", "C", **{"from": "A"})
    assert store.rolled_back("gguf", "python") == {"B"}
    store.log_event("gguf", "python", "rollback", "B", **{"from": "C"})  # `forge rollback --to B`: chosen again
    assert store.rolled_back("gguf", "python") == {"C"}
    store.log_event("gguf", "python", "rollback", "B", **{"from": "B"})  # re-served in place: nothing moved away
    assert store.rolled_back("gguf", "python") == {"C"}
    assert store.rolled_back("gguf", "rust") == set() and store.rolled_back("deployment", "python") == set()


def test_gc_keeps_history_and_partitions_ignore_it(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    arts = [_put(store, f"v{i}") for i in range(4)]
    store.log_event("gguf", "python", "rollback", arts[0].version, **{"from": arts[-1].version})
    before = (tmp_path / "gguf" / "python" / HISTORY).read_bytes()
    # a dead writer's leftovers are still removed; the history file is not
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "gguf" / "python" / f".tmp-{dead.pid}-x").mkdir()
    assert list(store.partitions()) == [("gguf", "python")]
    assert [a.version for a in store.versions("gguf", "python")] == [a.version for a in arts]
    removed = store.gc(keep=0)
    assert {a.version for a in removed} == {a.version for a in arts[:3]}  # only version folders go
    names = sorted(os.listdir(tmp_path / "gguf" / "python"))
    assert HISTORY in names and f".tmp-{dead.pid}-x" not in names
    assert (tmp_path / "gguf" / "python" / HISTORY).read_bytes() == before
    assert store.rolled_back("gguf", "python") == {arts[-1].version}
