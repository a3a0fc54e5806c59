"""Deploy history and `forge rollback`: real llama.cpp servers behind the Forge router on 127.0.0.1.

Two gguf artifact versions hold the same tiny Q8_0 GGUF with different metadata (so different versions and
tags); each is deployed through forge_assets.deploy.service.deploy_gguf, the path the `deployment` asset uses.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from forge_assets import cli
from forge_assets.artifacts import ArtifactStore
from forge_assets.config import load_config
from forge_assets.deploy import llama_server
from forge_assets.deploy.service import deploy_gguf, format_scores, key_scores
from forge_assets_tests.conftest import assert_no_forge_processes, free_port, write_config

GATES_FAILED = [{"name": "adapter_beats_base", "passed": False, "message": "held-out perplexity 1.300x the base model's (limit 1.05)"},
                {"name": "fim_not_worse_than_base", "passed": True, "message": "ok"}]


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    """forge.yaml in tmp (FORGE_CONFIG), its store; afterwards `forge stop` must leave no router or server running."""
    cfg_path = write_config(tmp_path, [], deploy={"port": free_port()})
    monkeypatch.setenv("FORGE_CONFIG", str(cfg_path))
    monkeypatch.delenv("FORGE_DEPLOYMENT", raising=False)
    store = ArtifactStore(tmp_path / "artifacts")
    yield cfg_path, store
    cli.main(["stop"])
    assert_no_forge_processes()


def _eval_scores(store: ArtifactStore, adapter: str, scores: dict, promote: bool = True):
    with store.write("eval_scores", "python", {"inputs": {"adapter": adapter}}, promote=promote) as out:
        (out.path / "scores.json").write_text(json.dumps(scores))
    return out.artifact


def _gguf(store: ArtifactStore, q8_gguf: Path, label: str, eval_version: str, adapter: str, figures: dict, promote: bool = True):
    """A gguf version like the export writes: the GGUF file, and a manifest naming its adapter and eval_scores."""
    manifest = {"inputs": {"adapter": adapter, "eval_scores": eval_version, "base_model": "b0"}, "quantization": "Q8_0", "figures": figures}
    with store.write("gguf", "python", manifest, promote=promote) as out:
        shutil.copyfile(q8_gguf, out.path / "model-Q8_0.gguf")
        (out.path / "export.txt").write_text(f"export {label}\n")
    time.sleep(0.01)
    return out.artifact


def _models(endpoint: str) -> list[str]:
    with urllib.request.urlopen(f"{endpoint}/models", timeout=30) as resp:
        return [m["id"] for m in json.loads(resp.read())["data"]]


def _show(capsys, *text: str) -> None:
    """Print past capsys (seen with pytest -s): the CLI's output, as a reader of the test log sees it."""
    with capsys.disabled():
        print(*text)


def _adapter(store: ArtifactStore, body: str):
    with store.write("adapter", "python", {"inputs": {}}) as out:
        (out.path / "adapter_model.safetensors").write_text(body)
    return out.artifact.version


@pytest.mark.slow
def test_rollback_serves_the_previous_gguf_and_forward_again(q8_gguf: Path, project, capsys):
    cfg_path, store = project
    cfg = load_config(cfg_path)
    ad_a, ad_b = _adapter(store, "a"), _adapter(store, "b")
    ev_a = _eval_scores(store, ad_a, {"perplexity_ratio": 0.91, "adapter_perplexity": 14.2, "base_perplexity": 15.6,
                                      "adapter_fim_exact_match": 0.5, "adapter_humaneval_pass_at_1": 0.125})
    ev_b = _eval_scores(store, ad_b, {"perplexity_ratio": 0.88, "adapter_perplexity": 13.7, "base_perplexity": 15.6})  # older: fewer scores
    a = _gguf(store, q8_gguf, "A", ev_a.version, ad_a, {"quantization_loss_pct": 1.25, "bytes": 1})
    tag_a = f"forge-python:{a.version[:12]}"
    assert key_scores(store, "python", gguf=a) == {"perplexity_ratio": 0.91, "adapter_perplexity": 14.2, "adapter_fim_exact_match": 0.5,
                                                   "adapter_humaneval_pass_at_1": 0.125, "quantization_loss_pct": 1.25}
    assert format_scores(key_scores(store, "python", gguf=a)) == "ppl ratio 0.910, ppl 14.20, FIM EM 0.500, HumanEval@1 0.125, quant loss 1.25%"

    capsys.readouterr()
    assert cli.main(["history", "--language", "python"]) == 0
    assert "no deploys of `python` are recorded" in capsys.readouterr().out

    dep_a, rec_a, reused = deploy_gguf(store, cfg, "python", a)
    assert not reused and rec_a["tag"] == tag_a and _models(rec_a["endpoint"]) == [tag_a]
    b = _gguf(store, q8_gguf, "B", ev_b.version, ad_b, {"bytes": 1})  # promoted, as the export does after its checks
    tag_b = f"forge-python:{b.version[:12]}"
    _, rec_b, _ = deploy_gguf(store, cfg, "python", b)
    endpoint = rec_b["endpoint"]
    assert endpoint == rec_a["endpoint"] and _models(endpoint) == [tag_b]
    assert deploy_gguf(store, cfg, "python", b, log=lambda _: None)[2] is True  # serving already: reused, no event
    ev = store.history("deployment", "python")[-1]
    assert (ev["event"], ev["tag"], ev["gguf"], ev["adapter"], ev["eval_scores"]) == ("deploy", tag_b, b.version, ad_b, ev_b.version)
    assert ev["scores"] == {"perplexity_ratio": 0.88, "adapter_perplexity": 13.7} and ev["previous_gguf"] == a.version

    # A newer eval_scores candidate that failed its gates.
    ev_c = _eval_scores(store, "ad-c", {"perplexity_ratio": 1.3, "adapter_perplexity": 20.0, "base_perplexity": 15.6, "gates": GATES_FAILED},
                        promote=False)

    # forge rollback: A serves again through the same stable endpoint.
    capsys.readouterr()
    started = time.time()
    assert cli.main(["rollback", "--language", "python"]) == 0
    rollback_s = time.time() - started
    out = capsys.readouterr().out
    _show(capsys, out, f"(rollback took {rollback_s:.1f}s)")
    assert f"now serving {tag_a} on {endpoint} (was {tag_b})" in out
    assert f"forge rollback --language python --to {b.version[:12]}" in out
    assert _models(endpoint) == [tag_a] and llama_server.read_state(store.root / "deployment" / "_endpoint")["tag"] == tag_a
    assert store.promoted("gguf", "python").version == a.version  # a later `deployment` run serves A too
    assert store.candidate("gguf", "python").version == b.version
    assert store.rolled_back("gguf", "python") == {b.version}
    gguf_ev = store.history("gguf", "python")[-1]
    assert (gguf_ev["event"], gguf_ev["version"], gguf_ev["from"]) == ("rollback", a.version, b.version)
    assert [e["event"] for e in store.history("gguf", "python")].count("promote") == 2  # A, then B; the rollback logs only `rollback`
    dep_ev = store.history("deployment", "python")[-1]
    assert (dep_ev["event"], dep_ev["tag"], dep_ev["gguf"], dep_ev["version"]) == ("rollback", tag_a, a.version, dep_a.version)
    assert dep_ev["scores"]["quantization_loss_pct"] == 1.25

    # forge history: newest last, the rollback marked as serving.
    assert cli.main(["history", "--language", "python"]) == 0
    hist = capsys.readouterr().out
    _show(capsys, hist)
    deploys, _, evals = hist.partition("forge history: `python` evaluations")
    rows = deploys.splitlines()[2:]
    assert [r.split()[2] for r in rows] == ["deploy", "deploy", "rollback"]
    assert evals.count("  eval ") == len(store.versions("eval_scores", "python")) >= 2  # then each evaluation, newest last
    assert tag_b in rows[1] and "ppl ratio 0.880, ppl 13.70" in rows[1] and "quant loss" not in rows[1]
    assert tag_a in rows[2] and "ppl ratio 0.910" in rows[2] and "quant loss 1.25%" in rows[2] and rows[2].endswith("<- serving")

    # forge status: promoted vs candidate and why the candidates were not promoted.
    assert cli.main(["status", "--language", "python"]) == 0
    status = json.loads(capsys.readouterr().out)
    _show(capsys, json.dumps(status["promotion"], indent=2))
    assert status["health"] == "up" and status["deployment"]["tag"] == tag_a and status["gguf"] == a.version
    g, e = status["promotion"]["gguf"], status["promotion"]["eval_scores"]
    assert g["promoted"] == a.version and g["candidate"] == b.version and "quant loss 1.25%" in g["promoted_scores"]
    assert g["not_promoted"].startswith(f"candidate {b.version} was not promoted: `forge rollback` moved away from it")
    assert e["promoted"] == ev_b.version and e["candidate"] == ev_c.version and e["candidate_scores"] == "ppl ratio 1.300, ppl 20.00"
    assert e["not_promoted"] == f"candidate {ev_c.version} was not promoted: adapter_beats_base: {GATES_FAILED[0]['message']}"

    # The deployment asset, run after the rollback, keeps A (reused: it answers already).
    from forge_assets_tests.conftest import forge_instance, materialize_assets

    with forge_instance() as instance:
        result = materialize_assets(cfg_path, ["deployment"], instance=instance)
    meta = result.asset_materializations_for_node("deployment")[0].metadata
    assert result.success and meta["tag"].value == tag_a and meta["reused"].value is True and _models(endpoint) == [tag_a]

    # --to a tag goes forward again; then a plain rollback finds nothing earlier that was not rolled back from.
    assert cli.main(["rollback", "--language", "python", "--to", tag_b]) == 0
    assert f"now serving {tag_b} on {endpoint} (was {tag_a})" in capsys.readouterr().out
    assert _models(endpoint) == [tag_b] and store.promoted("gguf", "python").version == b.version
    assert store.rolled_back("gguf", "python") == {a.version}
    assert cli.main(["rollback", "--language", "python"]) == 1
    err = capsys.readouterr().err
    _show(capsys, err)
    assert f"no earlier `gguf` version of `python` was served before {b.version[:12]} ({a.version[:12]} was rolled back from" in err
    assert f"Fix: name one with `forge rollback --language python --to VERSION` (stored: {a.version[:12]}" in err
    # --to by prefix: back to A explicitly (and A is no longer counted as rolled back).
    assert cli.main(["rollback", "--language", "python", "--to", a.version[:8]]) == 0
    assert _models(endpoint) == [tag_a] and store.rolled_back("gguf", "python") == {b.version}

    # Unknown versions, foreign tags: clear errors, nothing changes.
    for bad, expected in (("0123abcd", "no `gguf` version of `python` matches '0123abcd'"),
                          ("forge-rust:" + a.version[:12], "is not a tag of `python`")):
        assert cli.main(["rollback", "--language", "python", "--to", bad]) == 1
        err = capsys.readouterr().err
        _show(capsys, err)
        assert expected in err and "Fix:" in err
    assert _models(endpoint) == [tag_a]

    # A newer GGUF that failed its checks becomes the candidate; `forge gc --keep 0` then removes B (neither promoted,
    # candidate, deployed, nor what a plain rollback would serve, since it was rolled back from): --to B says so.
    _gguf(store, q8_gguf, "C", ev_c.version, "ad-c", {}, promote=False)
    assert cli.main(["gc", "--keep", "0"]) == 0
    assert f"removed gguf/python/{b.version}" in capsys.readouterr().out
    assert (store.folder("gguf", "python") / "history.jsonl").is_file() and (store.folder("deployment", "python") / "history.jsonl").is_file()
    capsys.readouterr()
    assert cli.main(["rollback", "--language", "python", "--to", b.version[:12]]) == 1
    err = capsys.readouterr().err
    _show(capsys, err)
    assert f"`gguf` version {b.version} of `python` was served or promoted before, but its files are no longer under" in err
    assert "removed by `forge gc`" in err and "Fix: roll back to a version still stored" in err
    assert _models(endpoint) == [tag_a]

    assert cli.main(["stop"]) == 0
    assert "record cleared" in capsys.readouterr().out


def test_rollback_errors_without_a_server(q8_gguf: Path, project, capsys):
    cfg_path, store = project
    assert cli.main(["rollback", "--language", "python"]) == 1
    err = capsys.readouterr().err
    assert "nothing is deployed for `python` yet" in err and "Fix: deploy it first with `forge run --language python`" in err

    # A deployment recorded as serving B, after A, whose files `forge gc` removed since.
    a = _gguf(store, q8_gguf, "A", "e0", "a0", {})
    b = _gguf(store, q8_gguf, "B", "e0", "a0", {})
    for art in (a, b):
        with store.write("deployment", "python", {"inputs": {"gguf": art.version}}) as out:
            (out.path / "deployment.json").write_text(json.dumps({"target": "llama-server", "tag": f"forge-python:{art.version[:12]}",
                                                                  "endpoint": "http://127.0.0.1:1/v1", "gguf": art.version}))
        store.log_event("deployment", "python", "deploy", out.artifact.version, tag=f"forge-python:{art.version[:12]}", gguf=art.version)
    shutil.rmtree(a.path)
    assert cli.main(["rollback", "--language", "python"]) == 1
    err = capsys.readouterr().err
    assert f"the GGUF served before {b.version[:12]} is `gguf` version {a.version}, but its files are no longer under" in err
    assert "Fix: roll back to a version still stored" in err
    assert store.promoted("gguf", "python").version == b.version and store.rolled_back("gguf", "python") == set()

    # Deployments made before the deployment history existed: the previous one comes from gguf's promote events.
    (store.folder("deployment", "python") / "history.jsonl").unlink()
    c = _gguf(store, q8_gguf, "C", "e0", "a0", {})
    assert [e["version"] for e in store.history("gguf", "python") if e["event"] == "promote"] == [a.version, b.version, c.version]
    assert cli.main(["rollback", "--language", "python"]) == 1  # served is B: the promotion before it is A, removed
    assert f"the GGUF served before {b.version[:12]} is `gguf` version {a.version}" in capsys.readouterr().err


def test_status_explains_candidates_from_their_recorded_gates(q8_gguf: Path, project, capsys):
    """Gate verdicts recorded in a version's manifest (as eval_scores records them) explain why it was not promoted."""
    cfg_path, store = project
    good = _eval_scores(store, "a0", {"perplexity_ratio": 0.9, "adapter_perplexity": 10.0, "base_perplexity": 11.0})
    bad = _eval_scores(store, "a1", {"perplexity_ratio": 0.95, "adapter_perplexity": 10.5, "base_perplexity": 11.0,
                                     "adapter_fim_exact_match": 0.1}, promote=False)
    man = bad.manifest()
    man["gates"] = [{"name": "adapter_beats_base", "passed": True, "message": "ok"},
                    {"name": "fim_not_worse_than_base", "passed": False, "message": "FIM exact match 0.100 < base 0.300"}]
    (bad.path / "manifest.json").write_text(json.dumps(man))
    g1 = _gguf(store, q8_gguf, "1", good.version, "a0", {"quantization_loss_pct": 0.5})
    g2 = _gguf(store, q8_gguf, "2", good.version, "a0", {"quantization_loss_pct": 1e9}, promote=False)

    assert cli.main(["status", "--language", "python"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert "health" not in status and "deployment" not in status  # nothing deployed: no endpoint to check
    e, g = status["promotion"]["eval_scores"], status["promotion"]["gguf"]
    assert (e["promoted"], e["candidate"]) == (good.version, bad.version) and e["promoted_scores"] == "ppl ratio 0.900, ppl 10.00"
    assert e["not_promoted"] == f"candidate {bad.version} was not promoted: fim_not_worse_than_base: FIM exact match 0.100 < base 0.300"
    assert (g["promoted"], g["candidate"]) == (g1.version, g2.version) and g["promoted_scores"] == "ppl ratio 0.900, ppl 10.00, quant loss 0.50%"
    assert g["not_promoted"].startswith(f"candidate {g2.version} was not promoted: ")
    if hasattr(load_config(cfg_path), "gates"):  # forge.yaml's gates block: the loss is judged against today's limit
        assert "quantization_loss: its held-out perplexity is 1000000000.00% above the reference's (unquantized base GGUF + LoRA)" in g["not_promoted"]
    # Same candidate as promoted: no note.
    store.promote(bad)
    cli.main(["status", "--language", "python"])
    assert "not_promoted" not in json.loads(capsys.readouterr().out)["promotion"]["eval_scores"]
