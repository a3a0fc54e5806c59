"""A safetensors file's header (its tensor table), read by hand without loading tensors, with bounds.

The format: 8 bytes, a little-endian u64 N; N bytes of UTF-8 JSON, an object {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}; then the tensor bytes, offsets counted from 8 + N.
N comes from the file, so it is checked before anything is read: at most MAX_HEADER_BYTES (the safetensors
crate's own MAX_HEADER_SIZE) and no more than the file holds. A damaged or hostile file then fails at once with
a clear message instead of asking for 2**62 bytes of memory. Standard library only.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

# safetensors' limit (MAX_HEADER_SIZE = 100_000_000 in the Rust crate's src/tensor.rs): files it writes never
# exceed it, and it refuses to read one that does.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"
_FIX = "Fix: copy or download the file again; if it came from elsewhere, re-save the model with safetensors (save_pretrained)"


class SafetensorsHeaderError(ValueError):
    """A safetensors file whose header cannot be read; the message names the file, what is wrong and the fix."""


def read_safetensors_header_at(path: str | os.PathLike, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[dict, int]:
    """(the header as a dict, the file offset its tensor data starts at: 8 + N). SafetensorsHeaderError if unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise SafetensorsHeaderError(f"{path}: not a safetensors file: {size} bytes, fewer than the 8 that give "
                                             f"the header's length (truncated?). {_FIX}.")
            (n,) = struct.unpack("<Q", head)
            if n > max_header_bytes:
                raise SafetensorsHeaderError(
                    f"{path}: the safetensors header claims to be {n:,} bytes, more than safetensors' limit of "
                    f"{max_header_bytes:,} bytes: the file is damaged or not a safetensors file. {_FIX}.")
            if n > size - 8:
                raise SafetensorsHeaderError(
                    f"{path}: the safetensors header claims to be {n:,} bytes but the file holds only {size - 8:,} after "
                    f"the length field: the file is truncated or not a safetensors file. {_FIX}.")
            raw = fh.read(n)
    except OSError as exc:
        raise SafetensorsHeaderError(f"{path}: cannot read the safetensors file ({exc.strerror or exc}). "
                                     "Fix: check that the file exists and is readable.") from None
    if len(raw) < n:
        raise SafetensorsHeaderError(f"{path}: the file ended inside its safetensors header ({len(raw):,} of {n:,} bytes; "
                                     f"it changed while being read?). {_FIX}.")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsHeaderError(f"{path}: the safetensors header is not UTF-8 JSON ({exc}). {_FIX}.") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object "
                                     f"of tensors. {_FIX}.")
    data_bytes = size - 8 - n
    for name, info in header.items():
        if name == METADATA_KEY:
            continue
        problem = _entry_problem(info, data_bytes)
        if problem:
            raise SafetensorsHeaderError(f"{path}: tensor `{name}` in the safetensors header {problem}. {_FIX}.")
    return header, 8 + n


def read_safetensors_header(path: str | os.PathLike, max_header_bytes: int = MAX_HEADER_BYTES) -> dict:
    """The header of a safetensors file ({name: {"dtype", "shape", "data_offsets"}, "__metadata__": ...})."""
    return read_safetensors_header_at(path, max_header_bytes)[0]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(info: object, data_bytes: int) -> str | None:
    """What is wrong with one tensor's entry (dtype, shape, data_offsets inside the file), or None."""
    if not isinstance(info, dict):
        return f"is a JSON {type(info).__name__}, not an object with dtype, shape and data_offsets"
    if not isinstance(info.get("dtype"), str):
        return "has no dtype"
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"has shape {shape!r}, not a list of sizes"
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        return f"has data_offsets {offsets!r}, not [begin, end]"
    begin, end = offsets
    if begin > end or end > data_bytes:
        return f"has data_offsets [{begin}, {end}] outside the {data_bytes:,} bytes of tensor data the file holds"
    return None
