"""LoRA adapters as llama.cpp GGUF LoRA files, served unmerged on a base GGUF; switching them on a live context.

What llama.cpp expects of a LoRA file (read in its `src/llama-adapter.cpp`, `convert_lora_to_gguf.py` and gguf-py's
`constants.py`; nothing of theirs is copied here):

- keys: `general.type = "adapter"` (`gguf.GGUFType.ADAPTER`), `general.architecture` equal to the base GGUF's
  (llama.cpp refuses "model arch and LoRA arch mismatch"), `adapter.type = "lora"` (`Keys.Adapter.TYPE`) and
  `adapter.lora.alpha` as float32 (`Keys.Adapter.LORA_ALPHA`);
- tensors: for every adapted base tensor `<name>` (e.g. `blk.0.attn_q.weight`), `<name>.lora_a` and `<name>.lora_b`.
  In PyTorch order A is `[r, in]` and B is `[out, r]`; the GGUF writer reverses dims, so llama.cpp sees
  `a.ne = [in, r]`, `b.ne = [r, out]` and checks `a.ne[0] == W.ne[0]`, `b.ne[1] == W.ne[1]`, `a.ne[1] == b.ne[0]`.
  Any other tensor suffix (DoRA magnitudes, full `modules_to_save` copies, biases) makes llama.cpp refuse the file;
- scale: llama.cpp computes `y = W x + s * B (A x)` with `s = user_scale * alpha / r` (r = `b.ne[0]`, per tensor),
  or `s = user_scale` when alpha is 0. One alpha per file, so:
  plain LoRA writes `alpha`; rsLoRA (PEFT `use_rslora`: `alpha / sqrt(r)`) writes `alpha * sqrt(r)`; an mlx-lm
  adapter (it stores `scale` itself) writes `scale * r`. A tensor whose own scale differs from `alpha_gguf / r_t`
  (PEFT `rank_pattern` / `alpha_pattern`) gets the ratio folded into its B, so every tensor keeps its exact scale;
- llama architecture only (Llama, Mistral: the registry's `permute_qk`): HF q/k rows are permuted for llama.cpp's
  interleaved rotary layout; the rows of `q_proj`/`k_proj` B are permuted the same way (A is untouched, since the
  permutation acts on output rows). The Qwen families use the NEOX layout and need no permutation;
- MoE experts (qwen3_moe): PEFT trains them through `target_parameters` on transformers' fused 3-D expert tensors
  (`mlp.experts.gate_up_proj` [E, 2·ff, in], `mlp.experts.down_proj` [E, in, ff]; PEFT's ParamWrapper holds
  lora_A [E·r, in] whose rows e·r…e·r+r−1 are expert e's, and lora_B [out, r·E] whose column k·E+e is expert e's
  k-th; delta_e = s · B_e @ A_e). They are read as per-expert pairs named like the on-disk tensors
  (`mlp.experts.{e}.gate_proj`, gate rows first in gate_up) and written as 3-D `ffn_*_exps.lora_a` [E, r, in] /
  `.lora_b` [E, out, r], which llama.cpp multiplies through its `mul_mat_id` LoRA path, unmerged.

PiSSA as Forge saves it: `peft_backend.train` saves with `path_initial_model_for_weight_conversion`, which turns the
PiSSA adapter into an ordinary LoRA of rank 2r for the *unchanged* base (its adapter_config has
`init_lora_weights: true`, `r: 2r`, alpha doubled, or times sqrt(2) under rsLoRA), so it converts like any LoRA. An
adapter saved without that conversion (init_lora_weights `pissa*`/`olora`/`corda`, LoftQ) belongs to a modified
base, so it is refused.

Serving: `apply_lora(llm, path, scale)` switches the adapter of one `llama_cpp.Llama` holding the base once.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forge_assets.export.adapter_files import (CONFIG, AdapterFileError, AdapterFiles, feature_text, pattern_value, peft_features,
                                               read_adapter)
from forge_assets.export.gguf_export import ExportError

MERGE_FIX = "set deploy.merge: true to serve a merged GGUF"
OUTTYPES = ("F32", "F16", "BF16", "Q8_0")
# A PEFT ParamWrapper on fused MoE experts: `….mlp.experts` with one `.base_layer` per parameter wrapped after it.
_EXPERT_WRAPPER = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.\d+\.mlp\.experts)(?P<depth>(?:\.base_layer)*)$")
_PER_EXPERT = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.\d+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>\w+)$")


def _block_module(module: str) -> bool:
    """A module llama.cpp's LoRA path multiplies: a registry family's LoRA target in a transformer block, or an expert."""
    from forge_assets.architectures import FAMILIES, all_lora_modules

    if _EXPERT_WRAPPER.match(module) or _PER_EXPERT.match(module):
        return True
    leaves = all_lora_modules() + tuple(p for f in FAMILIES.values() for p in f.expert_projections)
    return re.match(r"^(?:.*\.)?layers\.\d+\.(?:[\w.]+\.)?(" + "|".join(leaves) + r")$", module) is not None
_PEFT_SUFFIX = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<kind>embedding_)?(?P<ab>[AB])(?:\.weight)?$")
_MLX_SUFFIX = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[ab])$")
_MLX_SWITCH = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.\d+\.mlp)\.switch_mlp\.(?P<proj>\w+)$")  # mlx-lm's MoE experts


@dataclass
class _Lora:
    """An adapter read into PyTorch orientation: per module (HF name without `.weight`), A [r, in], B [out, r], scale."""

    backend: str
    rank: int
    scale: float  # the adapter-wide scale (alpha / r, alpha / sqrt(r), or mlx's own)
    method: str
    pairs: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)


def _fail(where: Path, problem: str) -> str:
    return f"{where}: {problem}, so it cannot be served as an unmerged llama.cpp LoRA. Fix: {MERGE_FIX}."


def _load_float32(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 numpy (through torch, so bf16 files load too)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return {name: fh.get_tensor(name).float().numpy() for name in fh.keys()}


def _tensor_problem(weights: Path, keys: list[str], pattern: re.Pattern, ab: str) -> str | None:
    """A LoRA on a module llama.cpp cannot take, else a tensor that is no LoRA matrix, else None."""
    matches = [pattern.match(k) for k in keys]
    for m in matches:
        if m is not None and not _block_module(m["module"]):
            from forge_assets.architectures import all_lora_modules

            return _fail(weights, f"it adapts `{m['module']}`, and Forge's llama.cpp LoRA export covers only the "
                                  f"{'/'.join(all_lora_modules())} projections and MoE experts of the transformer blocks")
    for key, m in zip(keys, matches):
        if m is None:
            return _fail(weights, f"it holds `{key}`, a tensor that is not a LoRA {ab} matrix")
    if not keys:
        return _fail(weights, "it holds no LoRA tensors")
    return None


def _peft_problem(files: AdapterFiles) -> str | None:
    """Why a PEFT adapter folder cannot become a llama.cpp LoRA, or None."""
    cfg_path, cfg = files.folder / CONFIG, files.config
    features = peft_features(cfg)
    if "peft_type" in features:
        return _fail(cfg_path, f"a {features['peft_type']} adapter, not LoRA")
    if "use_dora" in features:
        return _fail(cfg_path, "a DoRA adapter (use_dora: true): llama.cpp adds s·BA only and has no DoRA magnitude vectors")
    if "init_lora_weights" in features:
        return _fail(cfg_path, f"it was saved unconverted (init_lora_weights: {features['init_lora_weights']}), so it applies to "
                               "a modified residual base, not the original one (Forge saves PiSSA converted to a plain LoRA)")
    for key in ("modules_to_save", "bias", "layer_replication", "trainable_token_indices", "alora_invocation_tokens"):
        if key in features:
            return _fail(cfg_path, feature_text(key, features[key]))
    from forge_assets.architectures import FAMILIES

    experts = {f"mlp.experts.{p}" for f in FAMILIES.values() for p in f.expert_parameters}
    odd = [t for t in cfg.get("target_parameters") or [] if not any(t == e or t.endswith("." + e) for e in experts)]
    if odd:
        return _fail(cfg_path, f"it targets the parameters {odd[:3]} (target_parameters), and only MoE expert tensors "
                               f"({', '.join(sorted(experts))}) convert")
    if "fan_in_fan_out" in features:
        return _fail(cfg_path, "it adapts Conv1D (fan_in_fan_out) layers")
    if files.weights.suffix != ".safetensors":
        return (f"{files.weights}: a PyTorch pickle, and Forge reads adapter_model.safetensors only. Fix: re-save the adapter "
                f"with PEFT's save_pretrained, or {MERGE_FIX}.")
    return _tensor_problem(files.weights, sorted(files.tensors), _PEFT_SUFFIX, "A/B")


def _mlx_problem(files: AdapterFiles) -> str | None:
    """Why an mlx-lm adapter folder cannot become a llama.cpp LoRA, or None."""
    cfg_path, cfg = files.folder / CONFIG, files.config
    kind = cfg.get("fine_tune_type", "lora")
    if kind == "dora":
        return _fail(cfg_path, "a DoRA adapter (fine_tune_type: dora): llama.cpp adds s·BA only and has no DoRA magnitude vectors")
    if kind != "lora":
        return _fail(cfg_path, f"fine_tune_type `{kind}` is not a LoRA")
    if files.rank is None or files.scale is None:
        return f"{cfg_path}: lora_parameters lacks rank/scale, so the LoRA scale is unknown. Fix: rematerialize the adapter, or {MERGE_FIX}."
    return _tensor_problem(files.weights, sorted(files.tensors), _MLX_SUFFIX, "a/b")


def _arch_problem(base_dir: Path) -> str | None:
    from forge_assets.architectures import FAMILIES, lookup

    try:
        model_type = json.loads((base_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        return f"{base_dir}/config.json: unreadable ({exc}). Fix: point at the adapter's Hugging Face base model folder."
    fam = lookup(model_type)
    if fam is None or not fam.llama_cpp_lora:
        ok = ", ".join(t for f in FAMILIES.values() if f.llama_cpp_lora for t in f.model_types)
        return _fail(base_dir / "config.json", f"base model_type `{model_type}` is not one Forge exports LoRA GGUFs for ({ok})")
    return None


def _problem(files: AdapterFiles) -> str | None:
    """Why llama.cpp cannot serve this adapter unmerged: its own format checks, then its base's architecture."""
    problem = _peft_problem(files) if files.backend == "peft" else _mlx_problem(files)
    if problem is None and (base := files.base_folder()) is not None:
        problem = _arch_problem(base)
    return problem


def unmerged_support(adapter_dir: Path) -> str | None:
    """None when the adapter can be served unmerged as a llama.cpp LoRA on the base GGUF; else one sentence naming
    the problem (DoRA, modules_to_save, a module llama.cpp cannot take, ...) and the fix (serve a merged GGUF)."""
    try:
        return _problem(read_adapter(adapter_dir))
    except AdapterFileError as exc:
        return f"{exc} Or {MERGE_FIX}."


# ------------------------------------------------------------------------------------------------ reading

def _pairs(files: AdapterFiles, pattern: re.Pattern, names: str, fix: str) -> dict[str, dict[str, np.ndarray]]:
    """The weights file's tensors (float32) grouped by module, {module: {"A"/"a": …, "B"/"b": …}}, each with its pair."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _load_float32(files.weights).items():
        m = pattern.match(key)
        parts.setdefault(m["module"], {})[m["ab"]] = value
    for module, ab in parts.items():
        if set(ab) != set(names):
            raise ExportError(f"{files.weights}: `{module}` has lora_{''.join(ab)} but not its pair. Fix: {fix}.")
    return dict(sorted(parts.items()))


def _read_peft(files: AdapterFiles) -> _Lora:
    adapter_dir, cfg = files.folder, files.config
    rank, alpha, rs = files.rank, files.alpha, bool(cfg.get("use_rslora"))

    def scale_of(r: int, a: float) -> float:
        return a / (math.sqrt(r) if rs else r)

    lora = _Lora("peft", rank, files.scale, "rslora" if rs else "lora")
    for module, ab in _pairs(files, _PEFT_SUFFIX, "AB", "re-save the adapter with PEFT's save_pretrained").items():
        a, b = ab["A"], ab["B"]
        wrapper = _EXPERT_WRAPPER.match(module)
        if wrapper:
            _expert_pairs(lora, adapter_dir, cfg, wrapper, a, b, scale_of)
            continue
        r = a.shape[0]  # the module's own rank (rank_pattern), as PEFT's scaling uses it
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != r:
            raise ExportError(f"{adapter_dir}: `{module}` has A {list(a.shape)} and B {list(b.shape)}, whose ranks "
                              "differ. Fix: re-save the adapter with PEFT's save_pretrained.")
        lora.pairs[module] = (a, b, scale_of(r, float(pattern_value(cfg.get("alpha_pattern"), module, alpha))))
    return lora


def _expert_pairs(lora: _Lora, adapter_dir: Path, cfg: dict, wrapper: re.Match, a: np.ndarray, b: np.ndarray, scale_of) -> None:
    """A PEFT ParamWrapper LoRA on a fused expert tensor, added to `lora` as per-expert pairs named like the on-disk
    tensors (`….mlp.experts.{e}.gate_proj`). Which tensor it is comes from its nesting: PEFT wraps a module's targeted
    parameters in the module's own parameter order (the registry's `expert_parameters` order), each around the
    previous one, so of n targeted ones the i-th sits under n−1−i `base_layer`s. (adapter_config.json's
    target_parameters is saved in set order, so its order says nothing.)"""
    from forge_assets.architectures import FAMILIES

    listed = {t.rsplit(".", 1)[-1] for t in cfg.get("target_parameters") or [] if ".experts." in f".{t}"}
    order = next((list(f.expert_parameters) for f in FAMILIES.values() if listed and listed <= set(f.expert_parameters)), [])
    targets = [p for p in order if p in listed]
    depth = wrapper["depth"].count(".base_layer")
    if depth >= len(targets):
        raise ExportError(f"{adapter_dir}: `{wrapper.group(0)}` matches no MoE expert tensor of a registry family "
                          f"(target_parameters {sorted(listed)}). Fix: {MERGE_FIX}.")
    param = targets[len(targets) - 1 - depth]
    projections = next((f.expert_parameters[param] for f in FAMILIES.values() if param in f.expert_parameters), None)
    if projections is None:
        raise ExportError(f"{adapter_dir}: LoRA on expert tensor `{param}`, which no registry family declares. "
                          f"Fix: {MERGE_FIX}.")
    name = f"{wrapper['prefix']}.{param}"
    r = int(pattern_value(cfg.get("rank_pattern"), name, cfg["r"]))
    experts, rem = divmod(a.shape[0], r)
    if rem or a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or b.shape[0] % len(projections):
        raise ExportError(f"{adapter_dir}: `{name}` has A {list(a.shape)} and B {list(b.shape)}, which are no rank-{r} "
                          "expert LoRA. Fix: re-save the adapter with PEFT's save_pretrained.")
    scale = scale_of(r, float(pattern_value(cfg.get("alpha_pattern"), name, cfg["lora_alpha"])))
    a3 = a.reshape(experts, r, a.shape[1])  # [E, r, in]
    b3 = b.reshape(b.shape[0], r, experts)  # [out, r, E]: column k·E + e is expert e's k-th
    rows = b.shape[0] // len(projections)
    for e in range(experts):
        be = b3[:, :, e]
        for i, proj in enumerate(projections):
            lora.pairs[f"{wrapper['prefix']}.{e}.{proj}"] = (np.ascontiguousarray(a3[e]),
                                                             np.ascontiguousarray(be[i * rows:(i + 1) * rows]), scale)


def _read_mlx(files: AdapterFiles) -> _Lora:
    adapter_dir, scale = files.folder, files.scale
    lora = _Lora("mlx", files.rank, scale, files.config.get("method", "lora"))
    for module, ab in _pairs(files, _MLX_SUFFIX, "ab", "rematerialize the adapter").items():
        switch = _MLX_SWITCH.match(module)
        if switch and ab["a"].ndim == 3:
            # mlx-lm's LoRASwitchLinear (MoE experts): lora_a [E, r, in], lora_b [E, out, r], delta_e = scale · b[e] @ a[e]
            for e in range(ab["a"].shape[0]):
                lora.pairs[f"{switch['prefix']}.experts.{e}.{switch['proj']}"] = (
                    np.ascontiguousarray(ab["a"][e]), np.ascontiguousarray(ab["b"][e]), scale)
            continue
        # mlx-lm: y = W x + scale * (x @ lora_a) @ lora_b, lora_a [in, r], lora_b [r, out] -> A = lora_a.T, B = lora_b.T
        a, b = ab["a"].T, ab["b"].T
        if a.shape[0] != b.shape[1]:
            raise ExportError(f"{adapter_dir}: `{module}` has lora_a {list(ab['a'].shape)} and lora_b "
                              f"{list(ab['b'].shape)}, whose ranks differ. Fix: rematerialize the adapter.")
        lora.pairs[module] = (np.ascontiguousarray(a), np.ascontiguousarray(b), scale)
    return lora


def _read_adapter(adapter_dir: Path) -> _Lora:
    """A PEFT or mlx-lm adapter folder in PyTorch orientation; ExportError if llama.cpp cannot serve it unmerged."""
    try:
        files = read_adapter(adapter_dir)
    except AdapterFileError as exc:
        raise ExportError(f"{exc} Or {MERGE_FIX}.") from None
    problem = _peft_problem(files) if files.backend == "peft" else _mlx_problem(files)
    if problem is not None:
        raise ExportError(problem)
    return _read_peft(files) if files.backend == "peft" else _read_mlx(files)


def _base_shapes(base_dir: Path) -> dict[str, list[int]]:
    """The base's tensor shapes from the safetensors headers; an MLX-quantized weight has its dequantized shape
    (what the base GGUF holds), not its packed one."""
    from forge_assets.export.hf_to_gguf import read_index

    if not any(base_dir.glob("*.safetensors")):
        raise ExportError(f"{base_dir}: no *.safetensors files, so the adapter cannot be checked against its base. "
                          "Fix: pass the Hugging Face base model folder the adapter was trained on.")
    return {name: list(src.shape) for name, src in read_index(base_dir).items()}


def _rope_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder output rows per head from HF's half-split rotary layout to llama.cpp's interleaved one: within each
    head, row i of the first half and row i of the second half become neighbours 2i, 2i+1."""
    out = rows.shape[0]
    half = out // n_head // 2
    return rows.reshape(n_head, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _encode(data: np.ndarray, outtype: str):
    """(array, raw GGML type or None) for a 2-D tensor in outtype; Q8_0 needs rows that are multiples of 32 and
    falls back to F16 otherwise (lora_b's rows are r long)."""
    import gguf

    if outtype == "F32":
        return data.astype(np.float32), None
    if outtype == "F16" or (outtype == "Q8_0" and data.shape[-1] % 32):
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if outtype == "BF16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, out: Path, outtype: str = "F16") -> dict:
    """Write a PEFT or mlx-lm LoRA adapter as a llama.cpp LoRA GGUF for the GGUF of `base_dir` (its HF folder).

    The file loads with `llama_cpp.Llama(model_path=base.gguf, lora_path=out)` or `apply_lora`; the result equals
    the merged model up to float rounding. Returns figures: tensors, modules, rank, alpha, scale, bytes, outtype.
    """
    import gguf

    adapter_dir, base_dir, out = Path(adapter_dir), Path(base_dir), Path(out)
    outtype = outtype.upper()
    if outtype not in OUTTYPES:
        raise ExportError(f"LoRA GGUF outtype `{outtype}` is unknown; choose one of {', '.join(OUTTYPES)}.")
    try:
        config = json.loads((base_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{base_dir}/config.json: unreadable ({exc}). Fix: pass the adapter's Hugging Face base "
                          "model folder (config.json and *.safetensors).") from None
    problem = _arch_problem(base_dir)
    if problem is not None:
        raise ExportError(problem)
    from forge_assets.architectures import lookup

    model_type = config["model_type"]
    fam = lookup(model_type)
    lora = _read_adapter(adapter_dir)
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    arch = getattr(gguf.MODEL_ARCH, fam.gguf_arch)
    names = gguf.get_tensor_name_map(arch, n_layers)
    shapes = _base_shapes(base_dir)

    # One alpha for the file: the adapter-wide scale times its rank; per-tensor differences fold into B.
    alpha = lora.scale * lora.rank if lora.scale else float(lora.rank)
    tensors: list[tuple[str, np.ndarray]] = []
    stacks: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # MoE: per stacked tensor, each expert's pair
    folded = 0
    for module, (a, b, scale) in sorted(lora.pairs.items()):
        weight = f"{module}.weight"
        target = names.get_name(weight, try_suffixes=(".weight",)) or (weight if _PER_EXPERT.match(module) else None)
        if target is None or weight not in shapes:
            raise ExportError(f"{adapter_dir}: it adapts `{module}`, which the {model_type} base {base_dir} does not have "
                              f"(no {'GGUF name' if target is None else 'tensor'} for `{weight}`). Fix: convert it "
                              "against the base model it was trained on.")
        w_out, w_in = shapes[weight]
        if a.shape[1] != w_in or b.shape[0] != w_out:
            raise ExportError(f"{adapter_dir}: `{module}` has A {list(a.shape)} and B {list(b.shape)}, which do not fit "
                              f"the base weight [{w_out}, {w_in}] in {base_dir}. Fix: convert it against the base model "
                              "it was trained on.")
        r = a.shape[0]
        ratio = scale / (alpha / r)
        if not math.isclose(ratio, 1.0, rel_tol=1e-6):
            b = b * np.float32(ratio)
            folded += 1
        if fam.permute_qk and module.endswith(("q_proj", "k_proj")):
            b = _rope_permute(b, n_head if module.endswith("q_proj") else n_kv)
        expert = _PER_EXPERT.match(module)
        if expert:
            stacks.setdefault(f"{expert['prefix']}.{expert['proj']}", {})[int(expert["e"])] = (a, b)
            continue
        tensors.append((f"{target}.lora_a", np.ascontiguousarray(a)))
        tensors.append((f"{target}.lora_b", np.ascontiguousarray(b)))
    from forge_assets.architectures import expert_count

    n_experts = expert_count(config)
    for stacked, by_e in sorted(stacks.items()):
        target = names.get_name(f"{stacked}.weight", try_suffixes=(".weight",))
        ranks = {a.shape[0] for a, _ in by_e.values()}
        if target is None or sorted(by_e) != list(range(n_experts)) or len(ranks) != 1:
            raise ExportError(f"{adapter_dir}: the expert LoRA on `{stacked}` covers experts {sorted(by_e)[:4]}… of "
                              f"{n_experts} with ranks {sorted(ranks)}; llama.cpp needs every expert at one rank. "
                              f"Fix: {MERGE_FIX}.")
        tensors.append((f"{target}.lora_a", np.stack([by_e[e][0] for e in range(n_experts)])))  # [E, r, in]
        tensors.append((f"{target}.lora_b", np.stack([by_e[e][1] for e in range(n_experts)])))  # [E, out, r]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_name(adapter_dir.name)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, data in tensors:
        enc, raw = _encode(data, outtype)
        if raw is None:
            w.add_tensor(name, enc)
        else:
            w.add_tensor(name, enc, raw_dtype=raw)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    tmp.replace(out)
    ranks = sorted({a.shape[0] for a, _, _ in lora.pairs.values()})
    return {"tensors": len(tensors), "modules": len(lora.pairs), "rank": ranks[0] if len(ranks) == 1 else ranks,
            "alpha": float(alpha), "scale": lora.scale, "folded_scales": folded, "method": lora.method,
            "backend": lora.backend, "architecture": gguf.MODEL_ARCH_NAMES[arch], "bytes": out.stat().st_size,
            "outtype": outtype}


# ------------------------------------------------------------------------------------------------ serving

def open_llama(lora_path: str | None = None, **kwargs):
    """`llama_cpp.Llama(..., lora_path=...)` that fails when llama.cpp refuses the LoRA.

    llama-cpp-python 0.3.36 tests the refused adapter's handle with `is None`, but ctypes hands back a NULL pointer
    object, so a LoRA llama.cpp rejected (wrong architecture, names or shapes; its log says which) leaves a Llama that
    crashes the process on its first eval. Here it is an ExportError instead."""
    import llama_cpp

    llm = llama_cpp.Llama(lora_path=lora_path, **kwargs)
    if lora_path and not llm._lora_adapter:
        llm._lora_adapter = None  # nothing to free
        llm.close()
        raise ExportError(f"{lora_path}: llama.cpp refused this LoRA for {kwargs.get('model_path')} (architecture, "
                          "tensor names or shapes; llama.cpp's log says which). Fix: export it with "
                          f"convert_lora_to_gguf against this base model, or {MERGE_FIX}.")
    return llm


def apply_lora(llm, adapter: Path | str | None, scale: float = 1.0) -> None:
    """Switch the LoRA adapter of a live `llama_cpp.Llama` (base loaded once) and reset its KV cache.

    `adapter` is a LoRA GGUF path, or None for the plain base. Through llama-cpp-python 0.3.36's ctypes binding:

    - `llama_adapter_lora_init(model, path: bytes) -> llama_adapter_lora_p | None` loads the file against the
      model (`llm.model`); handles are cached per Llama, so switching back costs no reload, and freed with
      `llama_adapter_lora_free` when the Llama closes (registered on its ExitStack, so before the model is freed);
    - `llama_set_adapters_lora(ctx, adapters: POINTER(llama_adapter_lora_p) array, n: size_t, scales: c_float array)
      -> int32` replaces the context's adapter set (n = 0 with NULL arrays clears it); 0 is success. The binding's
      `llama_set_adapter_lora(ctx, adapter, scale)` is only a deprecated one-adapter wrapper around it;
    - the KV cache holds keys/values computed with the previous adapter, and Llama reuses any cached token prefix,
      so `llm.reset()` (n_tokens = 0) and `llama_memory_clear(llama_get_memory(ctx), True)` drop it.
    """
    import llama_cpp

    cache: dict[str, object] | None = getattr(llm, "_forge_loras", None)
    if cache is None:
        cache = {}
        llm._forge_loras = cache

        def free_all(llm_ref=llm, handles=cache):
            if handles:
                llama_cpp.llama_set_adapters_lora(llm_ref.ctx, None, 0, None)
            for handle in handles.values():
                llama_cpp.llama_adapter_lora_free(handle)
            handles.clear()

        llm._stack.callback(free_all)  # runs before the Llama's context and model are freed (LIFO)
    if adapter is None:
        rc = llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
    else:
        key = str(Path(adapter).resolve())
        handle = cache.get(key)
        if handle is None:
            if not Path(key).is_file():
                raise ExportError(f"{adapter}: no such LoRA GGUF file. Fix: export it with convert_lora_to_gguf.")
            handle = llama_cpp.llama_adapter_lora_init(llm.model, key.encode())
            if not handle:
                raise ExportError(f"{adapter}: llama.cpp could not load this LoRA for the loaded base (wrong "
                                  "architecture, tensor names or shapes; llama.cpp's log says which). Fix: export it "
                                  "with convert_lora_to_gguf against this base model.")
            cache[key] = handle
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
        scales = (ctypes.c_float * 1)(scale)
        rc = llama_cpp.llama_set_adapters_lora(llm.ctx, handles, 1, scales)
    if rc != 0:
        raise ExportError(f"llama.cpp refused to set LoRA adapter {adapter} (return code {rc}).")
    llm.reset()
    memory = llama_cpp.llama_get_memory(llm.ctx)
    if memory:
        llama_cpp.llama_memory_clear(memory, True)
