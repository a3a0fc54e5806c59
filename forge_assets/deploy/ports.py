"""Stable per-language ports for the llama.cpp endpoints, remembered in <artifact_root>/deployment/ports.json.

The file records the base port (``deploy.port``) the assignments were made from. While the base is unchanged a
language keeps its port; when ``deploy.port`` changes every language is re-assigned from the new base, keeping
their order, so the next deploy of each language moves its endpoint there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from forge_assets.private import private_umask

SPAN = 1000  # a language's port is within [base, base + SPAN)


def ports_file(root: Path) -> Path:
    return root / "deployment" / "ports.json"


def read_ports(root: Path) -> tuple[int | None, dict[str, int]]:
    """(base port, {language: port}); files written before the base was recorded report the lowest port as base."""
    path = ports_file(root)
    data = json.loads(path.read_text()) if path.is_file() else {}
    if "ports" in data and isinstance(data["ports"], dict):
        return data.get("base"), {k: int(v) for k, v in data["ports"].items()}
    ports = {k: int(v) for k, v in data.items()}  # the older flat {language: port} format
    return (min(ports.values()) if ports else None), ports


def _write(root: Path, base: int, ports: dict[str, int]) -> None:
    path = ports_file(root)
    private_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".ports.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"base": base, "ports": dict(sorted(ports.items()))}, indent=2))
    os.replace(tmp, path)


def port_for(root: Path, language: str, first: int) -> int:
    """The language's port: the one it was given from this base before, else the lowest unused from `first` on.

    When `first` (deploy.port) differs from the base the assignments were made from, all languages are
    re-assigned from `first` in the order of their old ports.
    """
    if not 0 < first < 65536:
        raise ValueError(f"deploy.port must be between 1 and 65535, not {first}")
    with _locked(root):
        return _assign(root, language, first)


@contextlib.contextmanager
def _locked(root: Path):
    path = ports_file(root).with_name(".ports.lock")
    private_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _assign(root: Path, language: str, first: int) -> int:
    base, ports = read_ports(root)
    changed = False
    if base != first and ports:
        order = sorted(ports, key=lambda lang: (ports[lang], lang))
        ports = {lang: first + i for i, lang in enumerate(order)}
        changed = True
    if language not in ports:
        used = set(ports.values())
        ports[language] = next(p for p in range(first, min(first + SPAN, 65536)) if p not in used)
        changed = True
    if changed or base != first:
        _write(root, first, ports)
    return ports[language]
