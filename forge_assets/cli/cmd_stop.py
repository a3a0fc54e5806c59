"""`forge stop`: stop the routers and servers Forge started, whatever target started them."""

from __future__ import annotations


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
