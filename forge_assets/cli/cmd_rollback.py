"""`forge rollback`: serve the GGUF served before the current one (or the one --to names) again, blue-green, and keep
it promoted. Which version that is comes from forge_assets.deploy.history."""

from __future__ import annotations

import sys


def rollback(language: str, to: str | None = None) -> int:
    """Serve the GGUF served before the current one (or the version `to` names) again, and point gguf's `promoted` at it."""
    from forge_assets.artifacts import ArtifactError
    from forge_assets.cli.common import split_fix
    from forge_assets.cli.common import store as cli_store
    from forge_assets.config import load_config
    from forge_assets.deploy.history import RollbackError, deployed, record_rollback, resolve_version, rollback_target
    from forge_assets.deploy.service import ROLLBACK, deploy_gguf, format_scores, key_scores
    from forge_assets.deploy.targets import deploy_errors

    cfg = load_config()
    store = cli_store(cfg, mirror=True)

    def say(msg: str) -> None:
        print(f"forge rollback: {language}: {msg}", flush=True)

    try:
        serving = deployed(store, language)
        if serving is None:
            raise RollbackError(f"nothing is deployed for `{language}` yet (no deployment under {store.folder('deployment', language)}), "
                                f"so there is nothing to roll back. Fix: deploy it first with `forge run --language {language}`.")
        current_record = serving[1]
        current = current_record["gguf"]
        target = resolve_version(store, cfg.deploy.tag_prefix, language, to) if to is not None else rollback_target(store, language, current)
        scores = format_scores(key_scores(store, language, gguf=target))
        say(f"serving `gguf` {target.version} again in place of {current_record['tag']}" + (f" ({scores})" if scores else ""))
        art, record, reused = deploy_gguf(store, cfg, language, target, action=ROLLBACK, log=say)
    except (RollbackError, ArtifactError, *deploy_errors()) as exc:
        cause, fix = split_fix(str(exc))
        print(f"forge rollback: {language}: {cause}\n  Fix: {fix}", file=sys.stderr)
        return 1
    promoted = store.promoted("gguf", language)
    if reused and promoted is not None and promoted.version == target.version:
        say(f"{record['tag']} already serves on {record['endpoint']} and is gguf's promoted version; nothing changed.")
        return 0
    record_rollback(store, language, target, current, record["tag"], promoted)
    if target.version == current:
        say(f"{record['tag']} keeps serving on {record['endpoint']}; gguf's promoted version is {target.version} again"
            + (f" (was {promoted.version})." if promoted else "."))
        return 0
    say(f"now serving {record['tag']} on {record['endpoint']} (was {current_record['tag']}); gguf's promoted version is {target.version}.")
    say(f"to serve the previous model again: forge rollback --language {language} --to {current[:12]}")
    return 0
