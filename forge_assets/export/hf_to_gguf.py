"""Hugging Face safetensors → GGUF, streamed tensor by tensor, for the families of the architecture registry
(`forge_assets/architectures`: Qwen2/Qwen2.5, dense Qwen3, Llama 2/3, Mistral, Qwen3 MoE, Qwen3-Next), with an
optional LoRA adapter folded in on the way.

Why Forge's own writer (on the `gguf` package) rather than llama.cpp's `convert_hf_to_gguf.py`: that script is in
llama-cpp-python's source distribution only, not in the installed wheel, so no installed Forge could run it; it
refuses any BPE tokenizer whose hash it does not know (forge-tiny's, any team's retrained one); and it cannot fold
an adapter in, so the merged model would first be written to disk as a whole Hugging Face folder. `bench/export.py`
measures both on the same ≥1 B model (figures in the README).

Memory and disk (what a 32 B model on a 48 GB Mac needs):

- Tensors are read from the safetensors shards with plain positioned reads (no mmap, so no file pages held in the
  process), in chunks of whole rows of at most `CHUNK_BYTES` each, converted and written before the next chunk is
  read. Peak memory is a few chunks plus the adapter plus a constant, whatever the model's size.
- A LoRA adapter is folded in per chunk: `W[rows] += scale · B[rows] @ A` in fp32 for those rows only.
- The output is F16 or BF16 (`outtype="auto"`: BF16 for a bfloat16 checkpoint, F16 otherwise, and F16 whenever an
  adapter is folded in, since BF16 would round most of its delta away), F32 only when asked.
  Norms, biases and other 1-D tensors are F32, as llama.cpp requires.
- An MLX-quantized checkpoint (mlx-lm `convert -q`, the mlx-community 4/8-bit models: packed uint32 weights with
  scales and biases per group, mixed per-module bit widths included) is dequantized chunk by chunk on the way
  (`_Quantized`); `auto` then writes the scales' type (BF16 for bfloat16 scales). mlx-lm's own `fuse --export-gguf`
  refuses Qwen; this path does not.
- A checkpoint saved by mlx-lm (quantized or not; e.g. an mlx-community 4-bit Qwen3-Coder-30B-A3B) is mapped back to
  the Hugging Face layout on reading (`_mlx_layout`), so its GGUF is the one the HF checkpoint converts to: the
  stacked experts `mlp.switch_mlp.{gate,up,down}_proj` [E, out, in] (packed [E, out, in·bits/32], scales and biases
  [E, out, groups]) become E per-expert views of the same bytes (`mlp.experts.{e}.…`, regrouped by `_stack_experts`,
  so an expert LoRA folds in per expert); Qwen3-Next's conv1d [C, K, 1] is read as HF's [C, 1, K] (the same bytes),
  and its zero-centred norms, which mlx-lm's `sanitize` saved as weight + 1, are not shifted a second time.

Per architecture (facts from the GGUF spec and llama.cpp's model loader):

- GGUF architecture `qwen2` (attention q/k/v biases), `qwen3` (per-head q/k RMS norms `attn_q_norm`/`attn_k_norm`),
  `llama` (Llama and Mistral; q/k rows permuted from Hugging Face's half-split rotary layout to llama.cpp's
  interleaved one). Tied embeddings: no `output.weight` (llama.cpp reuses `token_embd`). GQA through
  `attention.head_count_kv`; `attention.key_length`/`value_length` from `head_dim` (Qwen3's differs from
  hidden/heads).
- Rope: `rope.freq_base` from rope_theta; rope scaling `linear` and `yarn` as GGUF keys; Llama 3.1's `llama3` scaling
  as the `rope_freqs` tensor (per-dimension divisors, computed with transformers' own rope functions).
- Tokenizer: byte-level BPE (`gpt2` model) with `tokenizer.ggml.pre` detected from tokenizer.json's pre-tokenizer
  regex (Qwen2's → `qwen2`, Llama 3's → `llama-bpe`, GPT-2's → `gpt-2`), or SentencePiece-style BPE with byte
  fallback (`llama` model, Mistral/Llama 2, read with gguf-py's `LlamaHfVocab`). Token list padded to the
  embedding's rows (Qwen checkpoints have more rows than tokens). Special ids, add_bos and the chat template
  through gguf-py's `SpecialVocab`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forge_assets.export.gguf_export import ExportError
from forge_assets.export.safetensors_header import SafetensorsHeaderError, read_safetensors_header_at

CHUNK_BYTES = 64 << 20  # fp32 working size of one chunk of rows
OUTTYPES = ("auto", "F16", "BF16", "F32")
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}

# tokenizer.json pre-tokenizer regexes -> llama.cpp's pre-tokenizer names (llama.cpp implements these splits).
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {(QWEN2_REGEX,): "qwen2", (LLAMA3_REGEX,): "llama-bpe", ("<gpt2 byte-level>",): "gpt-2"}


# ------------------------------------------------------------------------------------------------ safetensors

@dataclass
class _Source:
    """One tensor of a checkpoint: its shard file, dtype, shape and byte offset in the file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    shifted: bool = False  # mlx-lm saved this zero-centred norm as weight + 1 already: the family's +1 is not applied

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1

    @property
    def value_dtype(self) -> str:
        """The floating type the tensor's values come in (for a quantized tensor: its scales')."""
        return self.dtype


@dataclass
class _Quantized(_Source):
    """An MLX affine-quantized matrix (mlx-lm `convert -q`, mlx-community models), read as its dequantized values.

    In the file: `<module>.weight` uint32 [rows, in·bits/32] (each row a little-endian bit stream, value j in bits
    j·bits … j·bits+bits−1), `<module>.scales` and `<module>.biases` [rows, in/group_size] in F16/BF16/F32. The value is
    w[r, j] = scales[r, j // group_size] · q[r, j] + biases[r, j // group_size] (mlx's affine mode), computed in float32,
    which is what mlx's quantized matmul multiplies with (tested; `mlx.core.dequantize` in float16/bfloat16 rounds the
    product and the sum separately, up to one unit in the last place away). `shape` is the dequantized [rows, in];
    `file`/`offset` are the packed weight's."""

    scales: _Source | None = None
    biases: _Source | None = None
    bits: int = 0
    group_size: int = 0

    @property
    def value_dtype(self) -> str:
        return self.scales.dtype

    @property
    def words(self) -> int:
        """uint32 words per packed row."""
        return self.shape[-1] * self.bits // 32


MLX_BITS = (2, 3, 4, 5, 6, 8)  # the affine widths mlx packs


def _shard_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ExportError(f"{index}: not a safetensors index ({exc}). Fix: re-save the model with save_pretrained.") from None
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ExportError(f"{index} names shard(s) {', '.join(missing[:3])} that are not in {model_dir}. "
                              "Fix: download or copy every shard the index lists.")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt*"))
        raise ExportError(f"{model_dir}: no *.safetensors weights{' (found ' + ', '.join(other[:3]) + ')' if other else ''}. "
                          "Fix: save the model with save_pretrained(..., safe_serialization=True).")
    return files


def read_index(model_dir: Path) -> dict[str, _Source]:
    """Every tensor of a (sharded) safetensors checkpoint, from the files' headers only (no tensor data read)."""
    tensors: dict[str, _Source] = {}
    for f in _shard_files(model_dir):
        try:
            header, base = read_safetensors_header_at(f)  # the length is bounded before anything is read
        except SafetensorsHeaderError as exc:
            raise ExportError(str(exc)) from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            tensors[name] = _Source(f, info["dtype"], tuple(info["shape"]), base + int(info["data_offsets"][0]))
    if any(s.dtype == "U32" for s in tensors.values()):  # MLX-quantized: packed weights with scales and biases
        tensors = _mlx_quantized(tensors, model_dir)
    if any(_MLX_SWITCH.match(name) for name in tensors):  # saved by mlx-lm: its MoE layout back to Hugging Face's
        tensors = _mlx_layout(tensors, model_dir)
    for name, src in tensors.items():
        if src.dtype not in _ST_DTYPES and not isinstance(src, _Quantized):
            raise ExportError(f"{src.file}: tensor `{name}` is {src.dtype}; Forge converts F32, F16 and BF16 checkpoints "
                              "and MLX affine-quantized ones (mlx-lm convert -q). "
                              "Fix: start from the unquantized Hugging Face release (not a GPTQ/AWQ/FP8 one).")
    return tensors


def _in_features(module: str, config: dict) -> int | None:
    """The input width of a linear or embedding module of the supported architectures, from config.json (mlx-lm's
    names included: `mlp.switch_mlp.*` are the MoE experts)."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf in ("embed_tokens", "lm_head", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",
                "gate", "shared_expert_gate", "in_proj_qkvz", "in_proj_ba"):  # routers, linear attention's inputs
        return int(config["hidden_size"])
    if leaf == "o_proj":
        return int(config["num_attention_heads"]) * _head_dim(config)
    if leaf == "out_proj" and "linear_num_value_heads" in config:  # Qwen3-Next's linear attention
        return int(config["linear_num_value_heads"]) * int(config["linear_value_head_dim"])
    if leaf == "down_proj":
        if ".switch_mlp." in module or ".experts." in module:
            return int(config["moe_intermediate_size"])
        if ".shared_expert." in module:
            return int(config["shared_expert_intermediate_size"])
        return int(config["intermediate_size"])
    return None


def _mlx_quantized(tensors: dict[str, _Source], model_dir: Path) -> dict[str, _Source]:
    """Each packed `<module>.weight` (uint32) with its `.scales` and `.biases` as one _Quantized source named
    `<module>.weight`. Bits and group size come from the shapes and the module's input width in config.json, as
    mlx-lm's loader infers them (config.json's top-level `quantization` may not hold for every module, and
    per-module entries, e.g. a mixed 4/6-bit recipe's, are checked against the shapes)."""
    config = _config(model_dir)
    settings = config.get("quantization") if isinstance(config.get("quantization"), dict) else {}
    out = dict(tensors)
    for name, src in tensors.items():
        if src.dtype != "U32":
            continue
        module = name.removesuffix(".weight")
        scales, biases = tensors.get(f"{module}.scales"), tensors.get(f"{module}.biases")
        where = f"{src.file}: `{name}`"
        stacked = len(src.shape) == 3 and _MLX_SWITCH.match(name) is not None  # mlx-lm's experts [E, out, words]
        if not name.endswith(".weight") or scales is None or not (len(src.shape) == 2 or stacked):
            raise ExportError(f"{where} is a uint32 tensor without `{module}.scales` beside it, so it is not an MLX-quantized "
                              "weight Forge can dequantize. Fix: start from the unquantized release of the model, or an "
                              "mlx-lm `convert -q` one.")
        own = settings.get(module) if isinstance(settings.get(module), dict) else {}
        mode = own.get("mode", settings.get("mode", "affine"))
        if mode != "affine" or biases is None or scales.dtype not in _ST_DTYPES:
            raise ExportError(f"{where} is MLX-quantized in mode `{mode}` ({'no biases, ' if biases is None else ''}scales "
                              f"{scales.dtype}); Forge dequantizes mlx's affine mode (mlx-lm convert -q, mlx-community "
                              "4-bit/8-bit models). Fix: use an affine-quantized or the unquantized release of the model.")
        *lead, words = src.shape
        rows = math.prod(lead)
        groups = scales.shape[-1]
        width = _in_features(module, config) or int(own.get("group_size", settings.get("group_size", 64))) * groups
        bits, group_size = words * 32 // width, width // groups
        if (bits * width != words * 32 or group_size * groups != width or bits not in MLX_BITS
                or scales.shape != (*lead, groups) or biases.shape != scales.shape):
            raise ExportError(f"{where}: packed shape {list(src.shape)} with scales {list(scales.shape)} and biases "
                              f"{list(biases.shape)} is no MLX affine quantization of a {rows}×{width} matrix. Fix: check "
                              "hidden_size / intermediate_size / head_dim in config.json, or re-download the model.")
        if own and (own.get("bits", bits), own.get("group_size", group_size)) != (bits, group_size):
            raise ExportError(f"{where}: config.json's quantization entry for `{module}` says {own.get('bits')} bits, group "
                              f"size {own.get('group_size')}, but its shapes hold {bits} bits, group size {group_size}. "
                              "Fix: restore the model's config.json (mlx-lm would not load it either).")
        out[name] = _Quantized(src.file, "U32", (*lead, width), src.offset, scales=scales, biases=biases, bits=bits,
                               group_size=group_size)  # 3-D (mlx-lm's stacked experts) only until _mlx_layout splits it
        del out[f"{module}.scales"], out[f"{module}.biases"]
    return out


_MLX_SWITCH = re.compile(r"^(?P<prefix>.+\.mlp)\.switch_mlp\.(?P<proj>\w+)\.weight$")  # mlx-lm's stacked MoE experts
# what else mlx-lm's `sanitize` (mlx_lm/models/<model_type>.py, 0.32) changed in a checkpoint it saved, beyond
# stacking the experts into `switch_mlp` and dropping `mtp.*`: the norms it stored as weight + 1 (the registry's
# `mlx_shifted_norms`), and the conv1d weights it stored as [C, K, 1] (HF: [C, 1, K])


def _mlx_layout(tensors: dict[str, _Source], model_dir: Path) -> dict[str, _Source]:
    """A checkpoint saved by mlx-lm, in Hugging Face's layout, reading the same bytes: each stacked expert tensor
    `….mlp.switch_mlp.{proj}.weight` [E, out, in] (or MLX-quantized, with its scales and biases [E, out, groups]) as E
    per-expert tensors `….mlp.experts.{e}.{proj}.weight` [out, in] (views at offsets into the stacked ones); conv1d
    [C, K, 1] as [C, 1, K]; norms mlx-lm stored shifted by +1 marked so the family's +1 is not applied again."""
    from forge_assets.architectures import lookup

    config = _config(model_dir)
    fam = lookup(config.get("model_type"))
    shifted = fam.mlx_shifted_norms if fam else ()
    out: dict[str, _Source] = {}
    for name, src in tensors.items():
        m = _MLX_SWITCH.match(name)
        if m is None:
            if shifted and len(src.shape) == 1 and name.endswith(shifted):
                src = _Source(src.file, src.dtype, src.shape, src.offset, shifted=True)
            elif name.endswith(".conv1d.weight") and len(src.shape) == 3 and src.shape[2] == 1:
                src = _Source(src.file, src.dtype, (src.shape[0], 1, src.shape[1]), src.offset)
            out[name] = src
            continue
        if len(src.shape) != 3:
            raise ExportError(f"{src.file}: `{name}` has shape {list(src.shape)}, not mlx-lm's stacked experts "
                              "[experts, out, in]. Fix: re-download the model (or convert it again with mlx-lm).")
        n, rows = src.shape[0], src.shape[1]
        for e in range(n):
            key = f"{m['prefix']}.experts.{e}.{m['proj']}.weight"
            if isinstance(src, _Quantized):
                side = {}
                for what, part in (("scales", src.scales), ("biases", src.biases)):
                    size = rows * part.shape[-1] * np.dtype(_ST_DTYPES[part.dtype]).itemsize
                    side[what] = _Source(part.file, part.dtype, (rows, part.shape[-1]), part.offset + e * size)
                out[key] = _Quantized(src.file, "U32", (rows, src.shape[2]), src.offset + e * rows * src.words * 4,
                                      scales=side["scales"], biases=side["biases"], bits=src.bits, group_size=src.group_size)
            else:
                size = rows * src.shape[2] * np.dtype(_ST_DTYPES.get(src.dtype, np.uint8)).itemsize
                out[key] = _Source(src.file, src.dtype, (rows, src.shape[2]), src.offset + e * size)
    return out


def _unpack(words: np.ndarray, bits: int) -> np.ndarray:
    """uint32 rows [r, w] -> their values [r, w·32/bits] (uint8): value j of a row is bits j·bits … j·bits+bits−1 of the
    row read as one little-endian bit stream (mlx packs 2/4/8 bits within each word, 3/5/6 bits as 8 values in `bits`
    bytes, which is the same stream)."""
    rows = words.shape[0]
    data = np.ascontiguousarray(words, dtype="<u4").view(np.uint8).reshape(rows, -1)
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = (np.arange(8 // bits, dtype=np.uint8) * bits)
        return ((data[:, :, None] >> shifts) & mask).reshape(rows, -1)
    blocks = data.reshape(rows, -1, bits)  # 8 values in `bits` bytes
    wide = np.zeros((rows, blocks.shape[1], 8), np.uint8)
    wide[:, :, :bits] = blocks
    stream = wide.view("<u8")[:, :, 0]
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    return ((stream[:, :, None] >> shifts) & np.uint64(mask)).astype(np.uint8).reshape(rows, -1)


def _read_quantized(src: _Quantized, fh, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of an MLX-quantized matrix, dequantized to float32 [stop-start, in]: scales · q + biases
    per group, computed in float32 (each product and sum of a float16/bfloat16 scale and bias with q ≤ 255 rounded once)."""
    fh.seek(src.offset + start * src.words * 4)
    packed = np.fromfile(fh, dtype="<u4", count=(stop - start) * src.words)
    if packed.size != (stop - start) * src.words:
        raise ExportError(f"{src.file}: tensor data ends early. Fix: copy the shard again (it is truncated).")
    q = _unpack(packed.reshape(stop - start, src.words), src.bits)
    side = {}
    for what, part in (("scales", src.scales), ("biases", src.biases)):
        if Path(fh.name) == part.file:
            side[what] = _read_rows(part, fh, start, stop)
        else:
            with open(part.file, "rb") as other:
                side[what] = _read_rows(part, other, start, stop)
    groups = src.shape[1] // src.group_size
    w = q.reshape(stop - start, groups, src.group_size).astype(np.float32)
    w *= side["scales"][:, :, None]
    w += side["biases"][:, :, None]
    return w.reshape(stop - start, src.shape[1])


def _read_raw(src: _Source, fh, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) in the file's own dtype (BF16 as uint16), flattened, read with a positioned read (no mmap)."""
    per_row = src.row_elements
    dtype = _ST_DTYPES[src.dtype]
    fh.seek(src.offset + start * per_row * np.dtype(dtype).itemsize)
    raw = np.fromfile(fh, dtype=dtype, count=(stop - start) * per_row)
    if raw.size != (stop - start) * per_row:
        raise ExportError(f"{src.file}: tensor data ends early. Fix: copy the shard again (it is truncated).")
    return raw


def _read_rows(src: _Source, fh, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a tensor as float32, shaped."""
    if isinstance(src, _Quantized):
        return _read_quantized(src, fh, start, stop)
    raw = _read_raw(src, fh, start, stop)
    out = (raw.astype(np.uint32) << 16).view(np.float32) if src.dtype == "BF16" else raw.astype(np.float32, copy=False)
    return out.reshape((stop - start, *src.shape[1:]) if len(src.shape) > 1 else (stop - start,))


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even, NaN kept NaN."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


# ------------------------------------------------------------------------------------------------ tensors

class _Streamed:
    """A tensor written chunk by chunk: GGUFWriter.write_tensor_data only needs `nbytes` and `tofile(file)`."""

    def __init__(self, nbytes: int, write):
        self.nbytes = nbytes
        self._write = write

    def tofile(self, fout) -> None:
        self._write(fout)


@dataclass
class _Plan:
    name: str  # GGUF name
    hf: str | None  # source tensor (None: computed, e.g. rope_freqs)
    shape: tuple[int, ...]
    out: str  # "F32", "F16", "BF16"
    permute_rows: int = 0  # llama q/k: rows per head (head_dim), permuted within each head; 0: none
    data: np.ndarray | None = None  # computed tensors
    parts: tuple[str, ...] = ()  # MoE experts: the per-expert source tensors stacked, in order (hf is the first)
    transform: object = None  # a registry value transform applied to float32 rows (Qwen3-Next's A_log, norms)

    @property
    def sources(self) -> tuple[str, ...]:
        return self.parts or ((self.hf,) if self.hf else ())

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * (4 if self.out == "F32" else 2)


def _permute_rows(rows: np.ndarray, n_head_rows: int) -> np.ndarray:
    """Within each head (n_head_rows rows), HF's half-split rotary rows -> llama.cpp's interleaved ones."""
    n = rows.shape[0] // n_head_rows
    half = n_head_rows // 2
    return rows.reshape(n, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _encode(x: np.ndarray, out: str) -> np.ndarray:
    if out == "F32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if out == "F16":
        y = np.ascontiguousarray(x, dtype=np.float16)
        if not np.isfinite(y).all() and np.isfinite(x).all():
            raise ExportError(f"a weight of {float(np.abs(x).max()):.6g} is beyond F16's range (65,504), so the F16 GGUF would hold "
                              "infinities. Fix: set deploy.gguf_intermediate: F32 (or BF16) in forge.yaml.")
        return y
    return _to_bf16(x)


# ------------------------------------------------------------------------------------------------ config

def _config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no config.json, so this is not a Hugging Face model folder. "
                          "Fix: point base_model at the folder save_pretrained wrote.")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc}). Fix: restore the model's config.json.") from None


def architecture(config: dict, where: Path):
    """(gguf MODEL_ARCH, registry Family) for a Hugging Face config, or ExportError naming what is unsupported."""
    import gguf

    from forge_assets.architectures import UnknownArchitecture, of_config

    try:
        fam = of_config(config, f"{where}/config.json")
    except UnknownArchitecture as exc:
        raise ExportError(str(exc)) from None
    return getattr(gguf.MODEL_ARCH, fam.gguf_arch), fam


def _rope(config: dict) -> tuple[float, dict | None]:
    """(rope theta, rope scaling dict or None), from transformers 4's rope_theta/rope_scaling or 5's rope_parameters."""
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = config.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", "default") not in ("default", None):
        scaling = params
    if scaling is not None and (scaling.get("rope_type") or scaling.get("type")) in ("default", None):
        scaling = None
    return float(theta), scaling


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _llama3_rope_freqs(config: dict) -> np.ndarray:
    """llama.cpp's `rope_freqs` for Llama 3.1 rope scaling: per dimension pair, default inv_freq / scaled inv_freq,
    the scaled ones computed by transformers' own rope init function."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    theta, _ = _rope(config)
    dim = _head_dim(config)
    default = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    return (default / scaled.double().numpy()).astype(np.float32)


def _write_hparams(w, config: dict, where: Path, n_layers: int) -> list[_Plan]:
    """Model keys; returns computed tensors (llama3 rope_freqs) to add."""
    import gguf

    heads = int(config["num_attention_heads"])
    w.add_context_length(int(config.get("max_position_embeddings", 32768)))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(n_layers)
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    head_dim = _head_dim(config)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    params = config.get("rope_parameters") or {}
    partial = config.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0
    w.add_rope_dimension_count(int(head_dim * float(partial)))  # Qwen3-Next rotates a quarter of each head
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    theta, scaling = _rope(config)
    w.add_rope_freq_base(theta)
    extra: list[_Plan] = []
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        factor = float(scaling.get("factor", 1.0))
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(factor)
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(factor)
            orig = scaling.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
            if orig:
                w.add_rope_scaling_orig_ctx_len(int(orig))
        elif kind == "llama3":
            freqs = _llama3_rope_freqs(config)
            extra.append(_Plan(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None, freqs.shape, "F32", data=freqs))
        else:
            raise ExportError(f"{where}/config.json: rope scaling `{kind}` is not one llama.cpp implements for this "
                              "architecture (linear, yarn, llama3). Fix: remove rope_scaling from config.json to serve the "
                              "model at its native context, or pick a checkpoint without it.")
    return extra


# ------------------------------------------------------------------------------------------------ tokenizer

def _pre_tokenizer_regexes(pre: dict | None) -> tuple[str, ...]:
    """The split regexes of a tokenizer.json pre_tokenizer (GPT-2's ByteLevel regex named as such)."""
    if not pre:
        return ()
    items = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    found: list[str] = []
    for item in items or []:
        kind = item.get("type")
        if kind == "Split":
            pattern = item.get("pattern") or {}
            found.append(pattern.get("Regex") or re.escape(pattern.get("String", "")))
        elif kind == "ByteLevel" and item.get("use_regex", True):
            found.append("<gpt2 byte-level>")
        elif kind not in ("ByteLevel",):
            found.append(f"<{kind}>")
    return tuple(found)


def detect_pre_tokenizer(tokenizer_json: dict, where: Path) -> str:
    """llama.cpp's name for the way this tokenizer splits text before BPE, from its pre_tokenizer regexes."""
    found = _pre_tokenizer_regexes(tokenizer_json.get("pre_tokenizer"))
    if found in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[found]
    shown = "; ".join(f[:90] for f in found) or "none"
    raise ExportError(f"{where}/tokenizer.json: its pre-tokenizer ({shown}) is not one Forge maps to llama.cpp's "
                      "(Qwen2's regex → qwen2, Llama 3's → llama-bpe, GPT-2's byte-level → gpt-2), and llama.cpp would "
                      "split text differently from transformers. Fix: use a base model with one of those tokenizers.")


def _spm_vocab(model_dir: Path, model: dict) -> tuple[list, list[float], list]:
    """Tokens, scores and types of a SentencePiece-style tokenizer (llama.cpp's `llama` tokenizer model).

    With tokenizer.model, gguf-py's SentencePieceVocab reads the real scores. With tokenizer.json only, gguf-py's
    LlamaHfVocab gives texts and types but a placeholder score (-1000) for every token, and llama.cpp's SentencePiece
    tokenizer merges the adjacent pair whose result scores highest: so each token gets minus the rank of the BPE merge
    that makes it, which makes llama.cpp merge in the order transformers does."""
    if (model_dir / "tokenizer.model").is_file():
        from gguf.vocab import SentencePieceVocab

        rows = list(SentencePieceVocab(model_dir).all_tokens())
        return [r[0] for r in rows], [float(r[1]) for r in rows], [r[2] for r in rows]
    from gguf.vocab import LlamaHfVocab

    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    tokens, scores, types = [], [], []
    for text, _, kind in LlamaHfVocab(model_dir).all_tokens():
        tokens.append(text)
        piece = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        scores.append(-float(rank[piece]) if piece in rank else 0.0)
        types.append(kind)
    return tokens, scores, types


def _write_tokenizer(w, model_dir: Path, n_vocab: int) -> dict:
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json (a fast tokenizer), so the GGUF would have no vocabulary. "
                          "Fix: save the tokenizer with AutoTokenizer.from_pretrained(...).save_pretrained(model_dir).")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"{path}: a {model.get('type')} tokenizer; Forge exports BPE tokenizers (byte-level as Qwen and "
                          "Llama 3 ship them, or SentencePiece-style with byte fallback as Mistral and Llama 2 do). "
                          "Fix: use a base model with such a tokenizer.")
    if model.get("byte_fallback"):
        tokens, scores, types = _spm_vocab(model_dir, model)
        model_name, pre = "llama", "default"
    else:
        pre = detect_pre_tokenizer(tj, model_dir)
        model_name = "gpt2"
        ids: dict[str, int] = dict(model["vocab"])
        added = {t["content"]: t for t in tj.get("added_tokens", [])}
        for content, t in added.items():
            ids[content] = t["id"]
        size = max(ids.values()) + 1
        tokens = [f"[PAD{i}]" for i in range(size)]
        types = [gguf.TokenType.UNUSED] * size
        for tok, i in ids.items():
            tokens[i] = tok
            if tok in added:
                types[i] = gguf.TokenType.CONTROL if added[tok].get("special") else gguf.TokenType.USER_DEFINED
            else:
                types[i] = gguf.TokenType.NORMAL
        scores = None
    if len(tokens) > n_vocab:
        raise ExportError(f"{path}: {len(tokens)} tokens but the embedding has {n_vocab} rows. "
                          "Fix: resize the model's embeddings to the tokenizer (model.resize_token_embeddings).")
    for i in range(len(tokens), n_vocab):  # embedding rows past the tokenizer (Qwen pads its vocabulary)
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    w.add_tokenizer_model(model_name)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if scores is not None:
        w.add_token_scores(scores)
    w.add_token_types([int(t) for t in types])
    special = gguf.SpecialVocab(model_dir, load_merges=model_name == "gpt2", n_vocab=n_vocab)
    if model_name == "gpt2" and not special.merges:
        special.merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tok_cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    if "bos" not in special.add_special_token and not tok_cfg.get("bos_token"):
        special.add_special_token["bos"] = False  # Qwen: no BOS token at all
    special.add_to_gguf(w)
    texts = [t if isinstance(t, str) else t.decode() for t in tokens]
    for eot in ("<|im_end|>", "<|eot_id|>"):
        if eot in texts:
            w.add_eot_token_id(texts.index(eot))
            break
    return {"tokenizer_model": model_name, "tokenizer_pre": pre, "vocab_size": n_vocab,
            "merges": len(special.merges), "has_chat_template": special.chat_template is not None}


# ------------------------------------------------------------------------------------------------ convert

def _pick_outtype(outtype: str, sources: dict[str, _Source], folding: bool = False) -> str:
    """`auto`: F16 when an adapter is folded in (W + s·BA re-rounded to BF16 loses most of a small delta: on SmolLM2-135M
    a merged BF16 file scored +0.68 % against transformers + PEFT, F16 +0.006 %, and Q8_0 quantized from them +1.10 %
    against +0.39 %); else BF16 for a bfloat16 checkpoint (copied bit for bit), F16 otherwise."""
    if outtype not in OUTTYPES:
        raise ExportError(f"GGUF intermediate type `{outtype}`: choose one of {', '.join(OUTTYPES)}.")
    if outtype != "auto":
        return outtype
    if folding:
        return "F16"
    dtypes = {s.value_dtype for s in sources.values() if len(s.shape) == 2}  # an MLX-quantized tensor: its scales' type
    return "BF16" if dtypes == {"BF16"} else "F16"


_EXPERT = re.compile(r"^(?P<prefix>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")


def _stack_experts(sources: dict[str, _Source], config: dict, where: Path) -> tuple[dict[str, _Source], dict[str, tuple[str, ...]]]:
    """Per-expert tensors (`….mlp.experts.{e}.gate_proj.weight`) grouped into one stacked tensor each
    (`….mlp.experts.gate_proj.weight` [experts, out, in], the name gguf-py maps to `ffn_gate_exps`).
    Returns (sources with each group as one entry of the stacked shape, {stacked name: its parts in expert order})."""
    groups: dict[str, dict[int, str]] = {}
    for name in sources:
        m = _EXPERT.match(name)
        if m:
            groups.setdefault(f"{m['prefix']}.{m['proj']}.weight", {})[int(m["e"])] = name
    if not groups:
        return sources, {}
    from forge_assets.architectures import expert_count

    n = expert_count(config)
    out = {k: v for k, v in sources.items() if not _EXPERT.match(k)}
    parts: dict[str, tuple[str, ...]] = {}
    for stacked, by_e in groups.items():
        if sorted(by_e) != list(range(n)):
            missing = sorted(set(range(n)) - set(by_e))[:3]
            raise ExportError(f"{where}: `{stacked}` has {len(by_e)} expert tensors, not config.json's {n} "
                              f"(missing experts {missing}). Fix: copy every shard, or check num_experts in config.json.")
        names = tuple(by_e[e] for e in range(n))
        shapes = {sources[x].shape for x in names}
        if len(shapes) != 1:
            raise ExportError(f"{where}: the experts of `{stacked}` differ in shape ({sorted(shapes)[:2]}). "
                              "Fix: this is not a plain checkpoint of the family; re-download it.")
        first = sources[names[0]]
        out[stacked] = _Source(first.file, first.dtype, (n, *first.shape), first.offset)
        parts[stacked] = names
    return out, parts


def _plan(config: dict, sources: dict[str, _Source], arch, fam, outtype: str, where: Path) -> list[_Plan]:
    import gguf

    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(arch, n_layers)
    heads, kv_heads = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = _head_dim(config)
    tied = bool(config.get("tie_word_embeddings", False)) or "lm_head.weight" not in sources
    stacked_sources, stacked = _stack_experts(sources, config, where)
    plans = []
    for hf_name, src in stacked_sources.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        if fam.skip and fam.skip(hf_name):
            continue
        mapped = fam.rename(hf_name) if fam.rename else hf_name
        new = names.get_name(mapped, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ExportError(f"{where}: tensor `{hf_name}` has no GGUF name in the {arch.name.lower()} architecture. "
                              "Fix: this is not a plain checkpoint of that family (merge adapters and drop extra heads first).")
        shape = fam.rows_shape(hf_name, src.shape) if fam.rows_shape else src.shape
        keep_f32 = len(shape) < 2 or any(new.endswith(f".{t}.weight") or new.endswith(f".{t}") for t in fam.f32_tensors)
        out = "F32" if keep_f32 else outtype
        group = 0
        if fam.permute_qk and re.search(r"\.self_attn\.(q|k)_proj\.(weight|bias)$", hf_name):
            group = head_dim  # rows per head to permute (q: heads × head_dim rows, k: kv_heads × head_dim)
            expected = (heads if ".q_proj." in hf_name else kv_heads) * head_dim
            if src.rows != expected:
                raise ExportError(f"{where}: `{hf_name}` has {src.rows} rows, not heads × head_dim = {expected}. "
                                  "Fix: check num_attention_heads / num_key_value_heads / head_dim in config.json.")
        transform = fam.transform(hf_name) if fam.transform and not src.shifted else None
        plans.append(_Plan(new, stacked[hf_name][0] if hf_name in stacked else hf_name, tuple(shape), out,
                           permute_rows=group, parts=stacked.get(hf_name, ()), transform=transform))
    order = {"token_embd": 0, "output_norm": 2, "output": 3}
    plans.sort(key=lambda p: (order.get(p.name.split(".")[0], 1), _block_of(p.name), p.name))
    return plans


def _block_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m[1]) if m else -1


def convert_hf_to_gguf(model_dir: Path, out: Path, outtype: str = "auto", name: str = "forge", adapter: Path | None = None,
                       chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Write a Hugging Face model folder (sharded or not) as one GGUF file, streaming; with `adapter` (a PEFT or mlx-lm
    LoRA folder trained on this model) folded into the weights on the way. Returns figures for metadata.

    The file is written to `out` directly; callers write into a temporary name and rename it (pipeline.py does).
    """
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    config = _config(model_dir)
    arch, fam = architecture(config, model_dir)
    sources = read_index(model_dir)
    kind = outtype
    outtype = _pick_outtype(outtype, sources, folding=adapter is not None)
    embed = sources.get("model.embed_tokens.weight")
    if embed is None:
        raise ExportError(f"{model_dir}: no `model.embed_tokens.weight` tensor. Fix: this is not a complete "
                          f"{config.get('model_type')} checkpoint; copy every shard.")
    lora = _adapter_pairs(adapter) if adapter is not None else {}
    n_layers = int(config["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    computed = _write_hparams(w, config, model_dir, n_layers)
    if fam.write_hparams:
        fam.write_hparams(w, config)
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "BF16": gguf.LlamaFileType.MOSTLY_BF16}[outtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tok = _write_tokenizer(w, model_dir, embed.shape[0])
    plans = computed + _plan(config, sources, arch, fam, outtype, model_dir)
    unused = set(lora) - {h.removesuffix(".weight") for p in plans for h in p.sources}
    if unused:
        raise ExportError(f"{adapter}: the adapter changes {sorted(unused)[:3]}, which this base model has no weight for. "
                          "Fix: export the adapter with the base model it was trained on.")
    for p in plans:
        raw = {"F32": None, "F16": None, "BF16": gguf.GGMLQuantizationType.BF16}[p.out]
        w.add_tensor_info(p.name, p.shape, np.dtype(np.uint16 if p.out == "BF16" else np.float16 if p.out == "F16" else np.float32),
                          p.nbytes, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    shards = _Shards()
    merged = 0
    try:
        for p in plans:
            if p.data is not None:
                w.write_tensor_data(_encode(p.data, p.out))
                continue
            pairs = [lora.get(h.removesuffix(".weight")) if h.endswith(".weight") else None for h in p.sources]
            merged += sum(x is not None for x in pairs)
            w.write_tensor_data(_Streamed(p.nbytes, _writer([sources[h] for h in p.sources], shards, p, pairs, chunk_bytes)))
        w.close()
    finally:
        shards.close()
    types: dict[str, int] = {}
    for p in plans:
        types[p.out] = types.get(p.out, 0) + 1
    return {"architecture": gguf.MODEL_ARCH_NAMES[arch], "model_type": config.get("model_type"), "outtype": outtype,
            "outtype_asked": kind, "tensors": len(plans), "tensor_types": types, "bytes": out.stat().st_size,
            "lora_merged_tensors": merged, **tok}


class _Shards:
    """The one safetensors shard open at a time (tensors are written in GGUF order, which mostly follows the shards)."""

    def __init__(self):
        self.path: Path | None = None
        self.fh = None

    def get(self, path: Path):
        if self.path != path:
            self.close()
            self.fh, self.path = open(path, "rb"), path  # noqa: SIM115 (closed by close())
        return self.fh

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.fh, self.path = None, None


def _writer(parts: list[_Source], shards: _Shards, p: _Plan, pairs: list, chunk_bytes: int):
    """A function writing tensor p's data to a file: each source part (one, or an MoE layer's experts in order) chunk
    by chunk of whole rows (whole heads for permuted q/k), with its LoRA pair folded in and the registry's value
    transform applied."""

    def write(fout) -> None:
        for src, pair in zip(parts, pairs):
            fh = shards.get(src.file)
            passthrough = pair is None and not p.permute_rows and p.transform is None and p.out == src.dtype
            align = p.permute_rows or 1
            per_chunk = max(align, (chunk_bytes // (4 * src.row_elements)) // align * align)
            for start in range(0, src.rows, per_chunk):
                stop = min(src.rows, start + per_chunk)
                if passthrough:
                    _read_raw(src, fh, start, stop).tofile(fout)
                    continue
                rows = _read_rows(src, fh, start, stop)
                if pair is not None:
                    a, b, scale = pair
                    rows = rows + np.float32(scale) * (b[start:stop] @ a)
                if p.transform is not None:
                    rows = p.transform(rows)
                if p.permute_rows:
                    rows = _permute_rows(rows, p.permute_rows)
                _encode(rows, p.out).tofile(fout)

    return write


def _adapter_pairs(adapter: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """{HF module name: (A [r, in], B [out, r], scale)} in float32, for a LoRA llama.cpp could also apply unmerged;
    ExportError (naming why) for DoRA and other adapters that do not fold in as W + s·BA."""
    from forge_assets.export.lora_gguf import _read_adapter

    pairs = _read_adapter(Path(adapter)).pairs
    return {m.removeprefix("base_model.model."): (np.asarray(a, np.float32), np.asarray(b, np.float32), float(s))
            for m, (a, b, s) in pairs.items()}


def model_bytes(model_dir: Path) -> tuple[int, int]:
    """(bytes of all safetensors shards, bytes of the largest shard)."""
    sizes = [f.stat().st_size for f in _shard_files(Path(model_dir))]
    return sum(sizes), max(sizes)

