"""Safetensors headers read by hand are bounded: a length field of 2**62 or 200 MB fails at once with a clear
error (file, what, fix) and without allocating it; real files (written by the safetensors package) still read,
at every place Forge reads one (hf_to_gguf.read_index, random_models.parameter_count, vLLM's adapter check)."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from forge_assets.export.gguf_export import ExportError
from forge_assets.export.hf_to_gguf import read_index
from forge_assets.export.random_models import RandomModelError, parameter_count
from forge_assets.export.safetensors_header import (MAX_HEADER_BYTES, SafetensorsHeaderError, read_safetensors_header,
                                                    read_safetensors_header_at)


def _framed(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def _crafted(path: Path, claimed: int, body: bytes = b"{}", pad_to: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", claimed) + body)
    if pad_to is not None:
        with open(path, "r+b") as fh:
            fh.truncate(pad_to)  # sparse: no disk, but the file is as long as the header claims
    return path


def _fails_fast(path: Path, match: str) -> str:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(SafetensorsHeaderError, match=match) as err:
            read_safetensors_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1 << 20, f"{peak} bytes allocated"  # never the claimed size
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "Fix:" in msg
    return msg


def test_the_limit_is_safetensors_own():
    assert MAX_HEADER_BYTES == 100_000_000  # MAX_HEADER_SIZE in huggingface/safetensors src/tensor.rs


def test_a_header_length_of_2_to_the_62_fails_fast(tmp_path):
    msg = _fails_fast(_crafted(tmp_path / "huge.safetensors", 2**62), "more than safetensors' limit")
    assert f"{2**62:,} bytes" in msg and "100,000,000" in msg


def test_a_200_mb_header_fails_fast_even_when_the_file_is_that_long(tmp_path):
    path = _crafted(tmp_path / "big.safetensors", 200_000_000, pad_to=8 + 200_000_000 + 16)
    _fails_fast(path, "claims to be 200,000,000 bytes, more than safetensors' limit")


def test_a_header_longer_than_the_file_fails_fast(tmp_path):
    msg = _fails_fast(_crafted(tmp_path / "short.safetensors", 50_000_000), "but the file holds only 2 after the length field")
    assert "truncated" in msg


@pytest.mark.parametrize("content, match", [
    (b"", "fewer than the 8"),
    (b"\x01\x00", "fewer than the 8"),
    (struct.pack("<Q", 4) + b"[1] ", "a JSON list, not an object"),
    (struct.pack("<Q", 4) + b"{no}", "not UTF-8 JSON"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not UTF-8 JSON"),
    (struct.pack("<Q", 12) + b'{"w": [1,2]}', "tensor `w` .* is a JSON list"),
    (_framed(b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4096]}}') + b"\0" * 8, r"data_offsets \[0, 4096\] outside the 8 bytes"),
    (_framed(b'{"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}') + b"\0" * 8, "has shape '2', not a list of sizes"),
])
def test_malformed_headers_are_clear(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(SafetensorsHeaderError, match=match):
        read_safetensors_header(path)


def test_a_missing_file_is_clear(tmp_path):
    with pytest.raises(SafetensorsHeaderError, match="cannot read the safetensors file"):
        read_safetensors_header(tmp_path / "nope.safetensors")


def test_a_real_safetensors_file_reads(tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "b.bias": np.ones(5, dtype=np.float16)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    header, start = read_safetensors_header_at(path)
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a.weight"]["dtype"] == "F32" and header["a.weight"]["shape"] == [3, 4]
    assert header["b.bias"]["dtype"] == "F16" and header["b.bias"]["shape"] == [5]
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert start == 8 + n and header == json.loads(path.read_bytes()[8:start])
    b, e = header["a.weight"]["data_offsets"]
    assert np.array_equal(np.frombuffer(path.read_bytes()[start + b:start + e], dtype=np.float32).reshape(3, 4), tensors["a.weight"])
    assert load_file(str(path)).keys() == tensors.keys()
    # through the places Forge reads headers
    assert parameter_count(tmp_path) == 12 + 5
    index = read_index(tmp_path)
    assert index["a.weight"].shape == (3, 4) and index["a.weight"].offset == start + b


def test_every_reader_refuses_the_crafted_file_with_the_clear_error(tmp_path):
    from forge_assets.deploy import vllm_target
    from forge_assets.export.adapter_files import AdapterFileError, tensor_table

    _crafted(tmp_path / "model.safetensors", 2**62)
    with pytest.raises(RandomModelError, match="more than safetensors' limit"):
        parameter_count(tmp_path)
    with pytest.raises(ExportError, match="more than safetensors' limit"):
        read_index(tmp_path)
    with pytest.raises(AdapterFileError, match="more than safetensors' limit"):
        tensor_table(tmp_path / "model.safetensors")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    _crafted(adapter / "adapter_model.safetensors", 2**62)
    assert vllm_target._adapter_header(adapter) == {}  # as for any unreadable adapter file
