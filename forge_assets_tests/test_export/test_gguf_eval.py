"""Scoring the shipped file: llama.cpp's perplexity of a GGUF, on the same token ids as the HF model, and the quantization loss."""

from pathlib import Path

import numpy as np
import pytest

from forge_assets.export.gguf_eval import gguf_perplexity, hf_perplexity, quantization_loss_pct, token_windows
from forge_assets.export.gguf_export import convert_to_gguf, gguf_summary, quantize
from forge_assets_tests.conftest import PY_FILES, RS_FILES

# F32 GGUF vs F32 PyTorch on identical ids: only summation order differs (about 2e-6 relative measured on forge-tiny).
# 0.1 % relative leaves room for other CPUs' kernels yet fails a stray leading BOS/special token, which moves
# forge-tiny's perplexity by about 0.6 % (a 0.5 % tolerance would only just catch it), or logits off by a position.
F32_RELATIVE_TOLERANCE = 0.001
# Q8_0 costs a few hundredths of a percent on forge-tiny; 5 % would mean a broken export, not quantization.
Q8_0_MAX_LOSS_PCT = 5.0

UNSEEN = '''def handle_delete(request, store):
    """Remove the item named in the request."""
    key = request["key"]
    store.pop(key, None)
    return {"status": 204}
'''


@pytest.fixture(scope="module")
def windows(tiny_model: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    return token_windows(tok, [*PY_FILES.values(), *RS_FILES.values(), UNSEEN], max_tokens=128)


@pytest.fixture(scope="module")
def ggufs(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf-eval")
    files = {"F32": folder / "model-F32.gguf"}
    convert_to_gguf(tiny_model, files["F32"], "F32")
    for qtype in ("Q8_0", "Q4_K_M"):
        files[qtype] = folder / f"model-{qtype}.gguf"
        quantize(files["F32"], files[qtype], qtype, threads=2)
    return files


@pytest.fixture(scope="module")
def reference(tiny_model: Path, windows) -> tuple[float, int]:
    return hf_perplexity(tiny_model, windows)


def test_token_windows_cut_skip_and_limit(tiny_model: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    full = tok(PY_FILES["app/handlers.py"], add_special_tokens=False)["input_ids"]
    got = token_windows(tok, [PY_FILES["app/handlers.py"], "", "x", UNSEEN], max_tokens=40)
    assert got[0] == full[:40]  # the HF tokenizer's ids, no special tokens added
    assert len(got) == 2 and all(2 <= len(w) <= 40 for w in got)  # "" and "x" (one token) are skipped
    assert token_windows(tok, [PY_FILES["app/handlers.py"], UNSEEN], max_tokens=40, max_windows=1) == got[:1]


def test_f32_gguf_scores_like_transformers(windows, ggufs, reference):
    hf_ppl, hf_tokens = reference
    ppl, tokens = gguf_perplexity(ggufs["F32"], windows, n_threads=2)
    assert tokens == hf_tokens == sum(len(w) - 1 for w in windows)
    assert abs(ppl / hf_ppl - 1) < F32_RELATIVE_TOLERANCE, (ppl, hf_ppl)


def test_windows_are_scored_independently(windows, ggufs):
    # Each window starts from an empty cache: order and a roomier context change nothing.
    ppl, tokens = gguf_perplexity(ggufs["F32"], windows, n_threads=2)
    again, tokens_again = gguf_perplexity(ggufs["F32"], windows[::-1], n_ctx=256, n_threads=2)
    assert tokens_again == tokens and abs(again / ppl - 1) < 1e-5


def test_quantization_loss_is_real_and_grows_with_fewer_bits(windows, ggufs, reference):
    hf_ppl, _ = reference
    assert gguf_summary(ggufs["Q8_0"])["tensor_types"].get("Q8_0", 0) > 0
    f32, _ = gguf_perplexity(ggufs["F32"], windows, n_threads=2)
    q8, _ = gguf_perplexity(ggufs["Q8_0"], windows, n_threads=2)
    q4, _ = gguf_perplexity(ggufs["Q4_K_M"], windows, n_threads=2)
    q8_loss, q4_loss = quantization_loss_pct(hf_ppl, q8), quantization_loss_pct(hf_ppl, q4)
    assert q8 != f32 and q8_loss != 0.0 and q4_loss != 0.0  # measured on the quantized weights, not zero by construction
    assert abs(q8_loss) < Q8_0_MAX_LOSS_PCT
    # Fewer bits move the logits further from the F32 file's (perplexity itself may go either way on a tiny model:
    # measured 0.048 % for Q8_0 and 0.008 % for Q4_K_M on one forge-tiny).
    from forge_assets.export.gguf_export import load_llama

    def logits(path):
        llm = load_llama(path, n_ctx=256, logits_all=True)
        llm.eval(windows[0][:128])
        return np.array(llm.scores[:len(windows[0][:128])])

    ref = logits(ggufs["F32"])
    q8_dev, q4_dev = np.abs(logits(ggufs["Q8_0"]) - ref).mean(), np.abs(logits(ggufs["Q4_K_M"]) - ref).mean()
    assert 0 < q8_dev < q4_dev, (q8_dev, q4_dev)


def test_quantization_loss_arithmetic():
    assert quantization_loss_pct(10.0, 10.5) == 5.0
    assert quantization_loss_pct(10.0, 10.0) == 0.0
    assert quantization_loss_pct(20.0, 19.0) == -5.0
    assert quantization_loss_pct(3.0, 4.0) == 33.333
    with pytest.raises(ValueError, match="not a positive number"):
        quantization_loss_pct(0.0, 1.0)


def test_empty_or_unscorable_windows_fail_clearly(tiny_model: Path, ggufs):
    for score, model in ((hf_perplexity, tiny_model), (gguf_perplexity, ggufs["F32"])):
        with pytest.raises(ValueError, match=r"no token windows to score.*Fix: pass texts of at least 2 tokens"):
            score(model, [])
        with pytest.raises(ValueError, match=r"fewer than 2 tokens.*Fix:"):
            score(model, [[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="max_tokens >= 2"):
        token_windows(None, ["def f(): pass"], max_tokens=1)


def test_gguf_refuses_windows_it_cannot_score(ggufs):
    with pytest.raises(ValueError, match=r"outside .*vocabulary.*Fix:"):
        gguf_perplexity(ggufs["F32"], [[1, 2, 10_000_000]])
    with pytest.raises(ValueError, match=r"does not fit n_ctx=4.*Fix:"):
        gguf_perplexity(ggufs["F32"], [list(range(8))], n_ctx=4)
