"""`forge approve` and `forge reject`: decide on the candidate that `deploy.approval: manual` holds back
(forge_assets.deploy.approval keeps the queue; serving goes through the same blue-green path as a deploy)."""

from __future__ import annotations

import sys


def approve(language: str, version: str | None = None) -> int:
    """Serve the candidate awaiting approval (blue-green, smoke-tested), after checking today's gates again."""
    from forge_assets.artifacts import ArtifactError
    from forge_assets.cli.common import split_fix
    from forge_assets.cli.common import store as cli_store
    from forge_assets.config import load_config
    from forge_assets.deploy.approval import ApprovalError
    from forge_assets.deploy.approval import approve as do_approve
    from forge_assets.deploy.targets import deploy_errors

    cfg = load_config()
    store = cli_store(cfg, mirror=True)

    def say(msg: str) -> None:
        print(f"forge approve: {language}: {msg}", flush=True)

    try:
        _, record = do_approve(store, cfg, language, version, log=say)
    except (ApprovalError, ArtifactError, *deploy_errors()) as exc:
        cause, fix = split_fix(str(exc))
        print(f"forge approve: {language}: {cause}\n  Fix: {fix}", file=sys.stderr)
        return 1
    say(f"approved: {record['tag']} now serves on {record['endpoint']}.")
    return 0


def reject(language: str, reason: str, version: str | None = None) -> int:
    """Record that the candidate awaiting approval will not be served, and why."""
    from forge_assets.cli.common import split_fix
    from forge_assets.cli.common import store as cli_store
    from forge_assets.config import load_config
    from forge_assets.deploy.approval import ApprovalError
    from forge_assets.deploy.approval import reject as do_reject

    cfg = load_config()
    store = cli_store(cfg, mirror=True)
    try:
        cand = do_reject(store, cfg, language, reason, version)
    except ApprovalError as exc:
        cause, fix = split_fix(str(exc))
        print(f"forge reject: {language}: {cause}\n  Fix: {fix}", file=sys.stderr)
        return 1
    print(f"forge reject: {language}: rejected {cand.tag} ({reason.strip()}); "
          f"{cand.serving or 'nothing'} keeps serving.", flush=True)
    return 0


def awaiting_lines(store, cfg, languages: list[str]) -> list[str]:
    """What `forge run` says last under manual approval: each candidate waiting, its report and how to decide."""
    from forge_assets.deploy.approval import pending

    lines = []
    for lang in languages:
        cand = pending(store, cfg, lang)
        if cand is None:
            continue
        lines.append(f"forge: {cand.tag} passed every gate and awaits approval; {cand.serving or 'nothing'} keeps serving.")
        if cand.report:
            lines.append(f"  validation report: {cand.report}")
        lines.append(f"  approve: forge approve --language {lang}    reject: forge reject --language {lang} --reason \"...\"")
    return lines
