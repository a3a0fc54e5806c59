"""Stable per-language ports for llama.cpp servers: assigned once, remembered in the artifact root."""

from __future__ import annotations

import json
import os
from pathlib import Path


def port_for(root: Path, language: str, first: int) -> int:
    """The language's port: the one it was given before, else the lowest unused from `first` on."""
    path = root / "deployment" / "ports.json"
    ports = json.loads(path.read_text()) if path.is_file() else {}
    if language not in ports:
        used = set(ports.values())
        ports[language] = next(p for p in range(first, first + 1000) if p not in used)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports, indent=2, sort_keys=True))
        os.replace(tmp, path)
    return ports[language]
