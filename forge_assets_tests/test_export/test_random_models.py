"""Random models for GGUF parity tests: real tokenizer files that load and round-trip, models of each kind that load
and run in transformers, sharded and bfloat16 saves, and weights that are not the default init's zeros and ones."""

import json
import struct
from pathlib import Path

import pytest

from forge_assets.export.random_models import (
    BYTE_TOKENS,
    MODEL_KINDS,
    LLAMA3_REGEX,
    TOKENIZERS,
    RandomModelError,
    build_random_model,
    build_tokenizer,
    parameter_count,
)

SNIPPET = '''def handle_get(request, store):
    """Return the item named in the request."""
    key = request["key"]
    if key is None:  # héllo → ✓
        return {"status": 404, "error": f"no item {key}", "n": 1_000 + 2.5e-3}
\treturn {'status': 200, "item": store.get(key)}
'''

# Each kind with one of the tokenizers and a rope scaling, so every tokenizer and rope type is built at least once.
CASES = {
    "qwen2": {"tokenizer": "forge-tiny"},
    "qwen3": {"tokenizer": "llama3", "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}},
    "llama": {"tokenizer": "llama3", "tie_word_embeddings": True, "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 512}},
    "mistral": {"tokenizer": "spm", "rope_scaling": {"type": "linear", "factor": 2.0}},
    "qwen3_moe": {"tokenizer": "llama3", "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2},
    "qwen3_next": {"tokenizer": "llama3", "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
                   "shared_expert_intermediate_size": 32, "num_layers": 4},
}
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


def safetensors_headers(folder: Path) -> dict[str, dict]:
    """Every tensor's header entry (dtype, shape, offsets) across a folder's *.safetensors files."""
    out: dict[str, dict] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            out.update({k: v for k, v in json.loads(fh.read(n)).items() if k != "__metadata__"})
    return out


def load_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


@pytest.fixture(scope="module")
def built(tiny_model: Path, tmp_path_factory):
    """Build a kind's model (CASES, SMALL sizes) once per module."""
    root = tmp_path_factory.mktemp("random_models")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = build_random_model(kind, root / kind, tokenizer_source=tiny_model, **{**SMALL, **CASES[kind]})
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_tokenizer_loads_and_round_trips(kind: str, tiny_model: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    out = build_tokenizer(kind, tmp_path / kind, source=tiny_model)
    assert out == tmp_path / kind
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert 2000 <= len(tok) <= 4000 or kind == "forge-tiny"
    for text in (SNIPPET, "x = 1\n\n\n    y  = 2  \n"):
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "hi" in chat


def test_llama3_tokenizer_has_meta_llama3_shape(tmp_path: Path):
    from transformers import AutoTokenizer

    out = build_tokenizer("llama3", tmp_path)
    tj = json.loads((out / "tokenizer.json").read_text())
    split, byte_level = tj["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == LLAMA3_REGEX and split["behavior"] == "Isolated" and not split["invert"]
    assert byte_level == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    assert tj["decoder"]["type"] == "ByteLevel" and tj["model"]["type"] == "BPE" and tj["model"]["ignore_merges"]
    assert tj["post_processor"]["type"] == "TemplateProcessing"
    n_bpe = len(tj["model"]["vocab"])
    added = {t["content"]: t["id"] for t in tj["added_tokens"] if t["special"]}
    assert list(added) == ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert sorted(added.values()) == list(range(n_bpe, n_bpe + 5))  # after the BPE vocabulary, as in Llama 3

    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert (tok.bos_token, tok.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")
    ids = tok("def f(x):\n    return x")["input_ids"]
    assert ids[0] == added["<|begin_of_text|>"] and ids.count(added["<|begin_of_text|>"]) == 1
    chat = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                                   tokenize=False, add_generation_prompt=True)
    assert chat == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok(chat, add_special_tokens=False)["input_ids"].count(added["<|eot_id|>"]) == 2


def test_spm_tokenizer_has_mistral_shape(tmp_path: Path):
    from transformers import AutoTokenizer

    out = build_tokenizer("spm", tmp_path)
    tj = json.loads((out / "tokenizer.json").read_text())
    model = tj["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] and model["unk_token"] == "<unk>"
    assert tj["pre_tokenizer"] == {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    assert [d["type"] for d in tj["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse", "Strip"]
    vocab = model["vocab"]
    assert [vocab["<unk>"], vocab["<s>"], vocab["</s>"]] == [0, 1, 2]
    assert [vocab[b] for b in BYTE_TOKENS] == list(range(3, 259))
    assert 2000 <= len(vocab) <= 4000
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (cfg["bos_token"], cfg["eos_token"], cfg["add_bos_token"]) == ("<s>", "</s>", True)

    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tok("def f(x):\n    return x")["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1
    assert "<0x0A>" in tok.convert_ids_to_tokens(ids)  # a newline is a byte token, as in Llama 2 and Mistral
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                    {"role": "user", "content": "more"}], tokenize=False)
    assert chat == "<s>[INST] hi [/INST]yo</s>[INST] more [/INST]"


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_random_model_loads_and_runs(kind: str, built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = built(kind)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == kind
    assert config["vocab_size"] % 64 == 0 and len(tok) < config["vocab_size"] < len(tok) + 64  # padding rows, as in Qwen
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert config["eos_token_id"] is not None
    rope = config["rope_parameters"]  # transformers 5: rope_scaling and rope_theta in one dict
    scaling = CASES[kind].get("rope_scaling") or {"rope_type": "default"}
    assert rope["rope_type"] == scaling.get("rope_type", scaling.get("type"))
    assert rope["rope_theta"] == CASES[kind].get("rope_theta", 10000.0)
    assert rope.get("factor") == scaling.get("factor")
    if kind == "qwen2":
        assert config["use_sliding_window"] is False
    ids = tok(SNIPPET, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], config["vocab_size"]) and torch.isfinite(logits).all()
    assert parameter_count(out) == sum(p.numel() for p in model.parameters())


def test_qwen2_biases_and_norms_are_random(built):
    tensors = load_tensors(built("qwen2"))
    biases = [n for n in tensors if n.endswith(".bias")]
    assert {n.split(".")[-2] for n in biases} == {"q_proj", "k_proj", "v_proj"}
    norms = [n for n in tensors if "norm" in n]
    assert len(norms) == 2 * SMALL["num_layers"] + 1
    for name in biases + norms:
        t = tensors[name]
        assert t.std() > 0.05, name
    assert all(abs(tensors[n].mean() - 1) < 0.1 for n in norms)


def test_qwen3_norms_are_random(built):
    tensors = load_tensors(built("qwen3"))
    qk = [n for n in tensors if n.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(qk) == 2 * SMALL["num_layers"]
    assert all(tensors[n].shape == (SMALL["hidden_size"] // SMALL["num_heads"],) and tensors[n].std() > 0.05 for n in qk)


def test_sharded_bfloat16_save(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    out = build_random_model("mistral", tmp_path / "m", tokenizer="spm", dtype="bfloat16", max_shard_size="200KB", **SMALL)
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    headers = safetensors_headers(out)
    assert set(index["weight_map"]) == set(headers)
    assert {h["dtype"] for h in headers.values()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.dtype == torch.bfloat16
    assert parameter_count(out) == sum(p.numel() for p in model.parameters())


def test_same_seed_same_weights(tmp_path: Path):
    kw = {"tokenizer": "llama3", **SMALL, "num_layers": 1}
    a = load_tensors(build_random_model("llama", tmp_path / "a", seed=3, **kw))
    b = load_tensors(build_random_model("llama", tmp_path / "b", seed=3, **kw))
    c = load_tensors(build_random_model("llama", tmp_path / "c", seed=4, **kw))
    assert all((a[n] == b[n]).all() for n in a)
    assert not (a["model.embed_tokens.weight"] == c["model.embed_tokens.weight"]).all()


def test_unknown_kind_and_missing_source_are_refused(tmp_path: Path):
    with pytest.raises(RandomModelError, match="gemma"):
        build_random_model("gemma", tmp_path / "g")
    with pytest.raises(RandomModelError, match="tokenizer"):
        build_tokenizer("gpt2", tmp_path / "t")
    with pytest.raises(RandomModelError, match="forge-tiny"):
        build_tokenizer("forge-tiny", tmp_path / "t", source=tmp_path)
