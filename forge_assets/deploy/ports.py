"""Stable per-language ports for the llama.cpp endpoints, remembered in <artifact_root>/deployment/ports.json.

The file records the base port (``deploy.port``) the assignments were made from. While the base is unchanged a
language keeps its port; when ``deploy.port`` changes every language is re-assigned from the new base, keeping
their order, so the next deploy of each language moves its endpoint there.
"""

from __future__ import annotations

import json
from pathlib import Path

from forge_assets.files import atomic_write_json, locked

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
    atomic_write_json(ports_file(root), {"base": base, "ports": dict(sorted(ports.items()))})


def port_for(root: Path, language: str, first: int) -> int:
    """The language's port: the one it was given from this base before, else the lowest unused from `first` on.

    When `first` (deploy.port) differs from the base the assignments were made from, all languages are
    re-assigned from `first` in the order of their old ports.
    """
    if not 0 < first < 65536:
        raise ValueError(f"deploy.port must be between 1 and 65535, not {first}")
    with locked(ports_file(root).with_name(".ports.lock")):
        return _assign(root, language, first)


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
