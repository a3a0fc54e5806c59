"""Dagster runs left behind: a run whose process was killed (kill -9, a crash, a reboot) stays STARTED forever.

Forge tags each run with the process group and host that execute it (ForgeResource does, at the start
of every step), and marks a STARTED run failed once no process of that group is left on that host.
Runs launched elsewhere (another host, or without the tag) are left to Dagster's own run monitoring.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from forge_assets.files import pid_alive

PGID_TAG = "forge/pgid"
HOST_TAG = "forge/host"


def owner_tags() -> dict[str, str]:
    """The tags that name the process group running this run."""
    return {PGID_TAG: str(os.getpgid(0)), HOST_TAG: socket.gethostname()}


def group_alive(pgid: int) -> bool:
    """Whether any live process of the group is left.

    kill(-pgid, 0) (killpg's own test) also succeeds while the group's killed processes are zombies that nobody has
    reaped yet (a container's init may take its time, or never reap): on Linux /proc is read instead, and a group whose
    every process is a zombie is gone. Elsewhere the signal test decides.
    """
    if not pid_alive(-pgid):
        return False
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


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
