"""Dagster runs left behind: a run whose process was killed (kill -9, a crash, a reboot) stays STARTED forever.

Forge tags each run with the process group and host that execute it (ForgeResource does, at the start
of every step), and marks a STARTED run failed once no process of that group is left on that host.
Runs launched elsewhere (another host, or without the tag) are left to Dagster's own run monitoring.
"""

from __future__ import annotations

import os
import socket

from forge_assets.files import pid_alive

PGID_TAG = "forge/pgid"
HOST_TAG = "forge/host"


def owner_tags() -> dict[str, str]:
    """The tags that name the process group running this run."""
    return {PGID_TAG: str(os.getpgid(0)), HOST_TAG: socket.gethostname()}


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (kill(-pgid, 0) signals the group: killpg's own test)."""
    return pid_alive(-pgid)


def fail_stale_runs(instance) -> list[str]:
    """Mark failed every STARTED/STARTING run of this host whose process group is gone; return their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    failed = []
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])):
        pgid, run_host = run.tags.get(PGID_TAG), run.tags.get(HOST_TAG)
        if not pgid or run_host != host or group_alive(int(pgid)):
            continue
        instance.report_run_failed(run, message=f"Forge: the process group {pgid} that ran this run is gone (killed or crashed); marked failed.")
        failed.append(run.run_id)
    return failed
