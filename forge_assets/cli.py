"""The `forge` command: run the main job for every configured language; show, roll back, stop or list deployments."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path


def _instance():
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("data/dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()


def run(languages: list[str] | None) -> int:
    """Materialize the whole chain (base_model, then each language's partition); one language's failure does not stop the others."""
    from forge_assets.config import load_config
    from forge_assets.definitions import defs
    from forge_assets.partitions import add_languages
    from forge_assets.runs import fail_stale_runs, owner_tags
    from forge_assets.sensors import language_fingerprints

    cfg = load_config()
    wanted = languages or cfg.languages or sorted(language_fingerprints())
    if not wanted:
        print("forge: the configured repositories hold no source files of a known language; nothing to train.", file=sys.stderr)
        return 1
    instance = _instance()
    for run_id in fail_stale_runs(instance):
        print(f"forge: run {run_id} was left STARTED by a process that is gone; marked it failed.")
    add_languages(instance, wanted, "forge run")
    job = defs.get_job_def("forge")
    failures: dict[str, list[dict]] = {}
    for i, lang in enumerate(wanted):
        print(f"forge: materializing the `{lang}` chain (DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
        try:
            result = job.execute_in_process(partition_key=lang, instance=instance, raise_on_error=False, tags=owner_tags())
        except KeyboardInterrupt:
            return _interrupted(wanted[i:])
        if _was_interrupted(result):
            return _interrupted(wanted[i:])
        if not result.success:
            failures[lang] = failure_summary(result)
    status(wanted, endpoint=True)
    if failures:
        print(_failure_block(failures), file=sys.stderr)
        return 1
    return 0


def _interrupted(left: list[str]) -> int:
    print(f"forge: interrupted; stopped with {', '.join(left)} not finished. Promoted artifacts and deployments are as they were.", file=sys.stderr)
    return 130


def _errors(result):
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            yield ev.step_key, ev.step_failure_data


def _was_interrupted(result) -> bool:
    for _, data in _errors(result):
        err = data.error
        while err is not None:
            if err.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                return True
            err = err.cause
    return False


def _split_fix(text: str) -> tuple[str, str]:
    cause, sep, fix = text.partition("Fix:")
    return cause.strip(), (fix.strip() if sep else "see the run's log (dagster dev, or the output above).")


def failure_summary(result) -> list[dict]:
    """One entry per failed step or failed blocking check: the step, the cause and the fix (no stack trace)."""
    out = []
    for step, data in _errors(result):
        if data.user_failure_data is not None and data.user_failure_data.description:
            text = data.user_failure_data.description
        else:
            err = data.error
            while err is not None and err.cause is not None and err.cls_name.startswith("Dagster"):
                err = err.cause  # the user's exception under Dagster's wrapper
            text = (err.message if err else "unknown error").strip()
            text = text.split(": ", 1)[1] if text.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum() and ": " in text else text
        cause, fix = _split_fix(text)
        out.append({"step": step, "cause": cause, "fix": fix})
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            cause, fix = _split_fix(ev.description or f"check {ev.check_name} failed")
            out.append({"step": f"{ev.asset_key.to_user_string()} check {ev.check_name}", "cause": cause, "fix": fix})
    return out


def _failure_block(failures: dict[str, list[dict]]) -> str:
    lines = [f"forge: the run failed for {', '.join(failures)}. Promoted artifacts and deployments are untouched."]
    for lang, items in failures.items():
        for item in items or [{"step": "?", "cause": "the run failed without a step failure", "fix": "see the run's log."}]:
            lines += [f"  [{lang}] step: {item['step']}", f"  [{lang}] cause: {item['cause']}", f"  [{lang}] fix: {item['fix']}"]
    return "\n".join(lines)


def gc(keep: int, dry_run: bool = False) -> int:
    """Remove old artifact versions that are neither promoted, candidates, deployed, among the newest `keep`, nor inputs of those."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    protect = set()
    for lang in store.languages("deployment"):
        dep = store.promoted("deployment", lang)
        if dep is not None:
            protect |= {("deployment", lang, dep.version)}
            # and the GGUF a plain `forge rollback` would serve again (with what it was made from)
            with contextlib.suppress(RollbackError, OSError, ValueError, KeyError):
                previous = _previous_version(store, lang, json.loads((dep.path / "deployment.json").read_text())["gguf"])
                protect |= {("gguf", lang, previous)}
    removed = store.gc(keep, protect=protect, dry_run=dry_run)
    for art in removed:
        print(f"forge gc: {'would remove' if dry_run else 'removed'} {art.asset}/{art.language}/{art.version}")
    print(f"forge gc: {len(removed)} version(s) {'to remove' if dry_run else 'removed'}; kept the newest {keep} of each, everything "
          "promoted or deployed, and the GGUF `forge rollback` would serve.")
    return 0


def status(languages: list[str] | None = None, endpoint: bool | None = None) -> int:
    """Print each language's latest artifact versions and deployment, checking the endpoint over HTTP."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy import llama_server, targets

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    from forge_assets.deploy.service import ENDPOINT, endpoint_dir

    langs = languages or sorted(({p.name for p in (store.root / "dataset").glob("*") if p.is_dir()}
                                 | {p.parent.name for p in (store.root / "deployment").glob(f"*/{llama_server.STATE}")}) - {ENDPOINT})
    shared = endpoint_dir(store)
    if (shared / llama_server.STATE).is_file() and (not languages if endpoint is None else endpoint):  # the one endpoint, every tag
        state = llama_server.read_state(shared)
        h = llama_server.health(shared)
        print(json.dumps({"endpoint": state["endpoint"], "health": h["health"], "context": state.get("n_ctx"),
                          "tags": [{"tag": m["id"], "language": m.get("language"), "adapter": m.get("lora"), "model": m["gguf"]}
                                   for m in state.get("models") or []],
                          "aliases": "<prefix>-<language>:latest names each language's current tag",
                          "server": (state.get("server") or {}).get("pid"), "log": state.get("log")}, indent=2))
    for lang in langs:
        row = {asset: (a.version if (a := store.promoted(asset, lang)) else None)
               for asset in ("repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf")}
        dep = store.promoted("deployment", lang)
        record = json.loads((dep.path / "deployment.json").read_text()) if dep else None
        if record:
            row["deployment"] = record
        if record or (store.folder("deployment", lang) / llama_server.STATE).is_file():  # (a per-language server from before)
            row.update(targets.of_record(record).describe(store, lang, record))  # health, over HTTP where the target serves
        scores = store.promoted("eval_scores", lang)
        if scores:
            s = json.loads((scores.path / "scores.json").read_text())
            row["perplexity"] = {"base": s["base_perplexity"], "adapter": s["adapter_perplexity"]}
            if s.get("fim_skipped"):  # a base without FIM tokens: said where `forge run` ends, not only in its log
                row["fim"] = f"skipped: {s['fim_skipped']}"
        promotion = {asset: info for asset in ("eval_scores", "gguf") if (info := _promotion(store, cfg, lang, asset))}
        if promotion:
            row["promotion"] = promotion
        print(json.dumps({"language": lang, **row}, indent=2))
    return 0


def _promotion(store, cfg, language: str, asset: str) -> dict | None:
    """The promoted and candidate versions of eval_scores or gguf with their key scores, and why a candidate was not promoted."""
    from forge_assets.deploy.service import format_scores, key_scores

    promoted, candidate = store.promoted(asset, language), store.candidate(asset, language)
    if promoted is None and candidate is None:
        return None

    def scores(art):
        return key_scores(store, language, **({"eval_scores": art.version} if asset == "eval_scores" else {"gguf": art}))

    out: dict = {"promoted": promoted.version if promoted else None}
    if promoted is not None:
        out["promoted_scores"] = format_scores(scores(promoted))
    out["candidate"] = candidate.version if candidate else None
    if candidate is not None and (promoted is None or candidate.version != promoted.version):
        out["candidate_scores"] = format_scores(scores(candidate))
        out["not_promoted"] = f"candidate {candidate.version} was not promoted: {_why_not_promoted(store, cfg, language, candidate)}"
    return out


def _why_not_promoted(store, cfg, language: str, art) -> str:
    """A rollback moved away from it, or the checks it failed (a `gates` list of {name, passed, message} in its
    scores.json or manifest), or, for a GGUF, a quantization loss over today's limit."""
    if art.version in store.rolled_back(art.asset, language):
        when = next((ev["at"][:19].replace("T", " ") for ev in reversed(store.history(art.asset, language))
                     if ev.get("event") == "rollback" and ev.get("from") == art.version), "?")
        return (f"`forge rollback` moved away from it ({when} UTC); serve it again with "
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
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            loss, limit = art.manifest()["figures"].get("quantization_loss_pct"), getattr(cfg.gates, "max_quantization_loss_pct", None)
            if loss is not None and limit is not None and float(loss) > float(limit):
                return (f"quantization_loss: its held-out perplexity is {float(loss):.2f}% above the reference's (unquantized base GGUF + LoRA) "
                        f"(limit gates.max_quantization_loss_pct = {limit})")
    return "it records no failed check (its run may not have finished; see the run in Dagster)"


def _store(cfg, mirror: bool = False):
    """The artifact store; with mirror=True (a command that writes) mirrored to S3 as the Dagster runs do when FORGE_DEPLOYMENT=s3."""
    from forge_assets.artifacts import ArtifactStore

    if mirror and os.environ.get("FORGE_DEPLOYMENT") == "s3" and os.environ.get("FORGE_S3_BUCKET"):
        from dagster_aws.s3 import S3Resource

        from forge_assets.resources import ForgeResource

        return ForgeResource(s3_bucket=os.environ["FORGE_S3_BUCKET"], s3_prefix=os.environ.get("FORGE_S3_PREFIX", "forge"),
                             s3=S3Resource()).store(cfg)
    return ArtifactStore(cfg.artifact_path)


def _when(at: str | None) -> str:
    return (at or "?")[:19].replace("T", " ")


def history(languages: list[str] | None) -> int:
    """Print each language's deploys and rollbacks (from deployment/<language>/history.jsonl), newest last, then its
    evaluations: each eval_scores version's verdict and validation report."""
    from forge_assets.artifacts import HISTORY
    from forge_assets.config import load_config
    from forge_assets.deploy.service import DEPLOY, ROLLBACK, format_scores

    cfg = load_config()
    store = _store(cfg)
    langs = languages or sorted({p.parent.name for p in (store.root / "deployment").glob(f"*/{HISTORY}")} | set(store.languages("eval_scores")))
    if not langs:
        print(f"forge history: no deploys are recorded under {store.root / 'deployment'} yet. Run `forge run` to deploy "
              "(deploys made before Forge kept a history are not listed).")
        return 0
    for lang in langs:
        events = [ev for ev in store.history("deployment", lang) if ev.get("event") in (DEPLOY, ROLLBACK)]
        where = store.folder("deployment", lang) / HISTORY
        if not events:
            print(f"forge history: no deploys of `{lang}` are recorded ({where} has none). Run `forge run --language {lang}` "
                  "to deploy it (deploys made before Forge kept a history are not listed).")
        else:
            dep = store.promoted("deployment", lang)
            serving = json.loads((dep.path / "deployment.json").read_text()).get("tag") if dep else None
            rows = [(_when(ev.get("at")), str(ev["event"]), str(ev.get("tag") or "?"), str(ev.get("gguf") or "?")[:16],
                     format_scores(ev.get("scores")) or "-") for ev in events]
            head = ("date (UTC)", "event", "tag", "gguf", "key scores")
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
            print(f"forge history: `{lang}` deploys and rollbacks, newest last ({where})")
            for i, r in enumerate([head, *rows]):
                mark = "  <- serving" if i == len(rows) and r[2] == serving else ""
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] + mark)
        _eval_history(store, lang)
    return 0


def _eval_history(store, language: str) -> None:
    """Each evaluation of the language, newest last: when, the candidate and champion adapters, the verdict (the gates
    it failed) and its validation report."""
    from forge_assets.evaluation.report import REPORT

    arts = store.versions("eval_scores", language)
    if not arts:
        return
    promoted = store.promoted("eval_scores", language)
    print(f"forge history: `{language}` evaluations (candidate vs served adapter vs base), newest last")
    for art in arts:
        man = art.manifest()
        inputs = man.get("inputs") or {}
        gates = man.get("gates") or []
        failed = [g.get("name", "?") for g in gates if isinstance(g, dict) and g.get("passed") is False]
        verdict = ("promoted" + ("  <- promoted now" if promoted and promoted.version == art.version else "") if not failed and gates
                   else f"FAILED {', '.join(failed)}" if failed else "not judged")
        champ = str(inputs.get("champion") or "none")[:12]
        report = art.path / REPORT
        print(f"  {_when(man.get('created_at'))}  eval {art.version[:12]}  adapter {str(inputs.get('adapter'))[:12]}  "
              f"champion {champ}  {verdict}" + (f"\n      report: {report}" if report.is_file() else ""))


class RollbackError(RuntimeError):
    """A rollback cannot be done; the message names why and, after `Fix:`, what to do."""


def _stored_list(store, language: str, exclude: str | None = None) -> str:
    arts = [a for a in store.versions("gguf", language) if a.version != exclude]
    return ", ".join(f"{a.version[:12]} ({_when(a.manifest().get('created_at'))})" for a in reversed(arts)) or "none"


def _resolve_version(store, cfg, language: str, want: str):
    """The stored gguf version named by a full version, a unique prefix, or a tag `<prefix>-<language>:<version>`."""
    from forge_assets.deploy.service import DEPLOY, ROLLBACK

    text = want.strip()
    if ":" in text:
        name, _, text = text.rpartition(":")
        if name != f"{cfg.deploy.tag_prefix}-{language}":
            raise RollbackError(f"{want!r} is not a tag of `{language}` (its tags are {cfg.deploy.tag_prefix}-{language}:<version>). "
                                f"Fix: pass a `{language}` gguf version, a unique prefix of one, or its tag.")
    text = text.lower()
    matches = [a for a in store.versions("gguf", language) if text and a.version.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RollbackError(f"{want!r} matches {len(matches)} `gguf` versions of `{language}`: "
                            f"{', '.join(a.version for a in matches)}. Fix: pass more characters of the one you mean.")
    known = {ev.get("version") for ev in store.history("gguf", language)} | {ev.get("from") for ev in store.history("gguf", language)}
    known |= {ev.get("gguf") for ev in store.history("deployment", language) if ev.get("event") in (DEPLOY, ROLLBACK)}
    gone = sorted(v for v in known if isinstance(v, str) and text and v.startswith(text))
    if gone:
        raise RollbackError(f"`gguf` version {gone[0]} of `{language}` was served or promoted before, but its files are no longer under "
                            f"{store.folder('gguf', language)} (removed by `forge gc`). Fix: roll back to a version still stored "
                            f"(`forge rollback --language {language} --to VERSION`; stored: {_stored_list(store, language)}), "
                            "and keep more versions next time with `forge gc --keep N`.")
    raise RollbackError(f"no `gguf` version of `{language}` matches {want!r} under {store.folder('gguf', language)}. "
                        f"Fix: pass one of the stored versions (newest first: {_stored_list(store, language)}); "
                        f"`forge history --language {language}` lists what was served.")


def _previous_version(store, language: str, current: str) -> str:
    """The newest gguf version served before `current` that no rollback moved away from (deployment history; else gguf's promotions)."""
    from forge_assets.deploy.service import DEPLOY, ROLLBACK

    rolled = store.rolled_back("gguf", language)
    served = [ev.get("gguf") for ev in store.history("deployment", language) if ev.get("event") in (DEPLOY, ROLLBACK)]
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
                        f"`forge rollback --language {language} --to VERSION` (stored: {_stored_list(store, language, exclude=current)}).")


def rollback(language: str, to: str | None = None) -> int:
    """Serve the GGUF served before the current one (or the version `to` names) again, and point gguf's `promoted` at it."""
    from forge_assets.artifacts import ArtifactError
    from forge_assets.config import load_config
    from forge_assets.deploy.service import ROLLBACK, deploy_gguf, format_scores, key_scores
    from forge_assets.deploy.targets import deploy_errors

    cfg = load_config()
    store = _store(cfg, mirror=True)

    def say(msg: str) -> None:
        print(f"forge rollback: {language}: {msg}", flush=True)

    try:
        dep = store.promoted("deployment", language)
        if dep is None:
            raise RollbackError(f"nothing is deployed for `{language}` yet (no deployment under {store.folder('deployment', language)}), "
                                f"so there is nothing to roll back. Fix: deploy it first with `forge run --language {language}`.")
        current_record = json.loads((dep.path / "deployment.json").read_text())
        current = current_record["gguf"]
        if to is not None:
            target = _resolve_version(store, cfg, language, to)
        else:
            version = _previous_version(store, language, current)
            try:
                target = store.get("gguf", language, version)
            except ArtifactError:
                raise RollbackError(f"the GGUF served before {current[:12]} is `gguf` version {version}, but its files are no longer under "
                                    f"{store.folder('gguf', language)} (removed by `forge gc`). Fix: roll back to a version still stored "
                                    f"(`forge rollback --language {language} --to VERSION`; stored: {_stored_list(store, language, exclude=current)}), "
                                    "and keep more versions next time with `forge gc --keep N`.") from None
        scores = format_scores(key_scores(store, language, gguf=target))
        say(f"serving `gguf` {target.version} again in place of {current_record['tag']}" + (f" ({scores})" if scores else ""))
        art, record, reused = deploy_gguf(store, cfg, language, target, action=ROLLBACK, log=say)
    except (RollbackError, ArtifactError, *deploy_errors()) as exc:
        cause, fix = _split_fix(str(exc))
        print(f"forge rollback: {language}: {cause}\n  Fix: {fix}", file=sys.stderr)
        return 1
    promoted = store.promoted("gguf", language)
    if reused and promoted is not None and promoted.version == target.version:
        say(f"{record['tag']} already serves on {record['endpoint']} and is gguf's promoted version; nothing changed.")
        return 0
    # A later `deployment` materialization serves gguf's promoted version: point it here so it does not undo this.
    store.promote(target, record=False)
    store.log_event("gguf", language, ROLLBACK, target.version, tag=record["tag"],
                    **{"from": current}, **({"promoted_before": promoted.version} if promoted and promoted.version != current else {}))
    if target.version == current:
        say(f"{record['tag']} keeps serving on {record['endpoint']}; gguf's promoted version is {target.version} again"
            + (f" (was {promoted.version})." if promoted else "."))
        return 0
    say(f"now serving {record['tag']} on {record['endpoint']} (was {current_record['tag']}); gguf's promoted version is {target.version}.")
    say(f"to serve the previous model again: forge rollback --language {language} --to {current[:12]}")
    return 0


def client_config(kind: str, language: str | None, write: str | None) -> int:
    """Print (or write) a ready-to-paste OpenCode, Continue or Tabby configuration for the deployed tags."""
    from forge_assets.artifacts import ArtifactError, ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy import clients
    from forge_assets.deploy.service import served

    cfg = load_config()
    try:
        name, text = clients.render(kind, served(ArtifactStore(cfg.artifact_path), cfg, language=language), language)
    except (ArtifactError, ValueError) as exc:
        print(f"forge client-config: {exc}", file=sys.stderr)
        return 1
    if write:
        Path(write).write_text(text)
        print(f"forge client-config: wrote {write} ({name} for {kind})", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def stop(languages: list[str] | None) -> int:
    """Stop the routers and servers Forge started (all, or the named languages'), whatever target started them.

    Only processes that still match what Forge recorded (pid, start time, command line) are signalled; a dead
    or reused pid just clears the record.
    """
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy.targets import TARGETS

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    for target in TARGETS.values():
        target.stop(store, cfg, languages, log=lambda line: print(f"forge: {line}", flush=True))
    return 0


# --- forge service install|uninstall|status: the endpoint as a per-user service that survives a reboot -------------

def _service_parser(sub) -> None:
    p_svc = sub.add_parser("service", help="install, remove or show the per-user service (systemd / launchd) that keeps the endpoint "
                                           "served across reboots")
    p_svc.add_argument("action", choices=["install", "uninstall", "status"])
    p_svc.add_argument("--no-start", action="store_true", help="install: only write the unit file and print the commands that start it")


def service(action: str, start: bool = True) -> int:
    """Install (write, enable and start), uninstall or show the service that runs the endpoint's supervisor
    (forge_assets.deploy.supervisor) for <artifact_root>/deployment/_endpoint."""
    from forge_assets.config import load_config
    from forge_assets.deploy import system_service
    from forge_assets.deploy.service import ENDPOINT

    cfg = load_config()
    state_dir = cfg.artifact_path / "deployment" / ENDPOINT

    def say(msg: str) -> None:
        print(f"forge service: {msg}", flush=True)

    try:
        if action == "install":
            out = system_service.install(state_dir, activate=start, log=say)
            if out["started"]:
                say(f"the endpoint recorded in {state_dir} is now served by the service; `forge run` deploys through it")
        elif action == "uninstall":
            system_service.uninstall(state_dir, log=say)
        else:
            print(json.dumps(system_service.status(state_dir), indent=2))
    except system_service.ServiceError as exc:
        cause, fix = _split_fix(str(exc))
        print(f"forge service: {cause}\n  Fix: {fix}", file=sys.stderr)
        return 1
    return 0


def _language(value: str) -> str:
    """argparse type of every --language: a name that can be a partition key and a folder (else a usage error, no traceback)."""
    from forge_assets.languages import language_name_problem

    problem = language_name_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge", description="Forge: per-language fine-tuned code models as Dagster assets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="materialize every asset for each language (the main job)")
    p_run.add_argument("--language", type=_language, action="append", help="only this language (repeatable)")
    p_status = sub.add_parser("status", help="show the latest artifact versions and deployments, and whether each endpoint answers")
    p_status.add_argument("--language", type=_language, action="append")
    p_stop = sub.add_parser("stop", help="stop the routers and llama.cpp servers Forge started (never another process)")
    p_stop.add_argument("--language", type=_language, action="append")
    p_hist = sub.add_parser("history", help="list a language's deploys and rollbacks (tag, GGUF, key scores), newest last")
    p_hist.add_argument("--language", type=_language, action="append", help="only this language (repeatable; default: all with a history)")
    p_rb = sub.add_parser("rollback", help="serve the previously deployed GGUF again (blue-green, smoke-tested) and keep it promoted")
    p_rb.add_argument("--language", type=_language, required=True)
    p_rb.add_argument("--to", metavar="VERSION", help="a gguf version, a unique prefix of one, or its tag (<prefix>-<language>:<version>)")
    p_cc = sub.add_parser("client-config", help="print a ready-to-paste OpenCode, Continue or Tabby configuration for the deployed tags")
    p_cc.add_argument("client", choices=["opencode", "continue", "tabby"])
    p_cc.add_argument("--language", type=_language, help="the language whose tag is the default model (default: the first deployed)")
    p_cc.add_argument("--write", metavar="FILE", help="write it to FILE instead of printing (e.g. opencode.json)")
    p_gc = sub.add_parser("gc", help="remove old artifact versions that are neither promoted nor deployed")
    p_gc.add_argument("--keep", type=int, default=3, help="newest versions to keep per asset and language besides promoted ones (default 3)")
    p_gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    _service_parser(sub)
    args = parser.parse_args(argv)
    from forge_assets.config import ConfigError
    from forge_assets.languages import LanguageNameError

    try:
        if args.command == "gc":
            return gc(args.keep, args.dry_run)
        if args.command == "rollback":
            return rollback(args.language, args.to)
        if args.command == "client-config":
            return client_config(args.client, args.language, args.write)
        if args.command == "service":
            return service(args.action, start=not args.no_start)
        return {"run": run, "status": status, "stop": stop, "history": history}[args.command](args.language)
    except (ConfigError, LanguageNameError) as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
