"""`forge service install|uninstall|status`: the endpoint as a per-user service (systemd / launchd) that survives a reboot."""

from __future__ import annotations

import json
import sys


def service(action: str, start: bool = True) -> int:
    """Install (write, enable and start), uninstall or show the service that runs the endpoint's supervisor
    (forge_assets.deploy.supervisor) for <artifact_root>/deployment/_endpoint."""
    from forge_assets.cli.common import split_fix
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
        cause, fix = split_fix(str(exc))
        print(f"forge service: {cause}\n  Fix: {fix}", file=sys.stderr)
        return 1
    return 0
