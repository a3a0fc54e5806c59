"""CodeBLEU of generated answers to instruction and commit prompts (no gate)."""

from __future__ import annotations

from forge_assets.evaluation.metrics import Metric, StatusLine

DESCRIPTION = ("CodeBLEU from the `codebleu` package: each instruction and commit prompt (up to `eval.codebleu_samples` per "
               "kind) answered greedily, the code in the answer's fences against the reference answer's; overall, per kind and "
               "its four components. For Python, Rust, JavaScript, Go, Ruby, Java, C, C++, C# and PHP (codebleu has no TypeScript, "
               "shell, Swift, Kotlin or YAML)")
KEYS = ("<side>_codebleu", "<side>_codebleu_<kind>", "<side>_codebleu_<component>")
METRICS = [Metric(name="codebleu", keys=KEYS, description=DESCRIPTION, settings=("codebleu_samples", "codebleu_max_new_tokens"),
                  status=(StatusLine("adapter_codebleu", "CodeBLEU"),), order=40)]
