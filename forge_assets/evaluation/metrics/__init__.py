"""The registry of evaluation metrics and gates: each described once, everything else derived from it.

One module of this package per metric (or per gate judging several): it declares

- `METRICS`: `Metric`s, the figures `evaluation/scores.py` writes into scores.json (their keys, with `<side>` for
  `base`/`adapter`/`champion`), what they measure (the docs table), the `eval:` settings (EvalConfig field names) they
  read, and the `StatusLine`s `forge status` / `forge history` show; a metric that `scores.py` does not compute itself
  gives `score`, called once per scored side (see `Metric.score`);
- `GATES`: `Gate`s, the blocking asset checks of forge.yaml's `gates:` block: the asset they guard, the UI description,
  the `gates:` settings (GatesConfig field names) they read, the docs table's "fails when" and the `judge` function.

Derived here, and nowhere else kept in step: the gate names and their order (`gate_names`), `judge` (what
`gate.judge_eval` returns), the check descriptions of `eval_scores`/`gguf` (`descriptions`), the status lines
(`status_lines`, for `deploy/service.py`), and the tables of docs/evaluation.md (`write_docs`; `python -m
forge_assets.evaluation.metrics --write-docs` regenerates them, `--check-docs` fails on drift).

Modules are found by name (every module of the package not starting with `_`); `order` sorts metrics and gates.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

SE_MULTIPLE = 2.0  # "worse" means worse by more than this many standard errors of the paired difference
ASSETS = ("eval_scores", "gguf")  # the assets gates guard


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    message: str
    figures: dict = field(default_factory=dict)
    skipped: bool = False  # not judged for a reason the figures give (it blocks nothing and claims no pass)


@dataclass(frozen=True)
class StatusLine:
    """One key score `forge status`, `forge history` and deploy events show: `key` in scores.json (eval_scores) or the
    gguf manifest's figures (gguf), a short `label`, and `fmt` (a format string over `label` and the value `v`)."""

    key: str
    label: str
    fmt: str = "{label} {v:.3f}"
    asset: str = "eval_scores"

    def format(self, v: float) -> str:
        return self.fmt.format(label=self.label, v=v)


@dataclass(frozen=True)
class Metric:
    """A figure scored per side. `keys`: its scores.json keys (`<side>` stands for base, adapter, champion);
    `settings`: the EvalConfig fields it reads (dotted for nested ones: `humaneval.problems`).

    `score(model, tokenizer, *, side, records, ev, seq_len, language, log) -> dict`, when given, computes it: called by
    `scores.evaluate` for every side with the split's records and the `eval:` block as a dict, it returns
    `{"<side>_<name>": number, ...}`. The built-in metrics are computed by scores.py itself and leave it None."""

    name: str
    keys: tuple[str, ...]
    description: str
    settings: tuple[str, ...] = ()
    status: tuple[StatusLine, ...] = ()
    order: int = 100
    score: Callable[..., dict] | None = None


@dataclass(frozen=True)
class Gate:
    """A blocking check on `asset`: `judge(figures, gates) -> Verdict` (figures: scores.json for eval_scores, the
    manifest's figures for gguf; gates: GatesConfig or a dict), `description` (the check's, shown in the UI),
    `fails_when` (the docs table), `settings` (the GatesConfig fields it reads)."""

    name: str
    asset: str
    judge: Callable[[dict, object], Verdict]
    description: str
    fails_when: str
    settings: tuple[str, ...] = ()
    order: int = 100


@dataclass(frozen=True)
class Registry:
    metrics: tuple[Metric, ...]
    gates: tuple[Gate, ...]


def significantly_worse(delta: float, se: float, tolerance: float) -> bool:
    """A paired difference (higher is better) below -tolerance *and* beyond SE_MULTIPLE standard errors: a regression
    that is neither within the allowed slack nor the noise of a small test split."""
    return delta < -tolerance and delta < -SE_MULTIPLE * se


def verdict(name: str, worse: list[str], passed: str, failed: str, figures: dict) -> Verdict:
    """A gate's outcome: `passed` when `worse` (the regressions found, described) is empty, else `failed` with
    ``{worse}`` replaced by them. Every failed message names what blocks, the limit, the consequence and the fix."""
    if not worse:
        return Verdict(name, True, passed, figures)
    return Verdict(name, False, failed.replace("{worse}", "; ".join(worse)), figures)


def setting(gates, key: str):
    """A gate setting from GatesConfig or a plain dict."""
    return gates[key] if isinstance(gates, dict) else getattr(gates, key)


def collect(modules) -> Registry:
    """The registry of the given modules' METRICS and GATES, each sorted by (order, name); a name declared twice, or a
    gate on an asset that has no gates, is an error naming the module."""
    metrics, gates, seen = [], [], {}
    for mod in modules:
        for item in [*getattr(mod, "METRICS", ()), *getattr(mod, "GATES", ())]:
            kind = "gate" if isinstance(item, Gate) else "metric"
            if (kind, item.name) in seen:
                raise ValueError(f"{mod.__name__}: the {kind} `{item.name}` is already declared by {seen[kind, item.name]}. "
                                 f"Fix: give it another name.")
            seen[kind, item.name] = mod.__name__
            if isinstance(item, Gate) and item.asset not in ASSETS:
                raise ValueError(f"{mod.__name__}: gate `{item.name}` guards `{item.asset}`, which has no gates. Fix: one of {ASSETS}.")
            (gates if isinstance(item, Gate) else metrics).append(item)
    return Registry(tuple(sorted(metrics, key=lambda m: (m.order, m.name))), tuple(sorted(gates, key=lambda g: (g.order, g.name))))


@cache
def registry() -> Registry:
    """Every metric and gate of this package's modules."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return collect(importlib.import_module(f"{__name__}.{n}") for n in names)


def gates_of(asset: str, reg: Registry | None = None) -> tuple[Gate, ...]:
    return tuple(g for g in (reg or registry()).gates if g.asset == asset)


def gate_names(asset: str, reg: Registry | None = None) -> tuple[str, ...]:
    """The names of `asset`'s gates, in judging order."""
    return tuple(g.name for g in gates_of(asset, reg))


def judge(asset: str, figures: dict, gates, reg: Registry | None = None) -> list[Verdict]:
    """Every gate of `asset` judged on `figures` under `gates` (forge.yaml's gates block), in order."""
    return [g.judge(figures, gates) for g in gates_of(asset, reg)]


def descriptions(asset: str, reg: Registry | None = None) -> dict[str, str]:
    """{gate name: the check's description} for `asset`'s blocking checks."""
    return {g.name: g.description for g in gates_of(asset, reg)}


def status_lines(asset: str, reg: Registry | None = None) -> tuple[StatusLine, ...]:
    """The key scores `forge status` shows for `asset`, in order."""
    return tuple(s for m in (reg or registry()).metrics for s in m.status if s.asset == asset)


def scorers(reg: Registry | None = None) -> tuple[Metric, ...]:
    """The metrics scores.py does not compute itself: their `score` is called for each side."""
    return tuple(m for m in (reg or registry()).metrics if m.score is not None)


# -- docs/evaluation.md -----------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[3] / "docs" / "evaluation.md"
COMMAND = "python -m forge_assets.evaluation.metrics --write-docs"


def _default(section, name: str) -> str:
    """A setting with its default, read from the config class (`eval.fim_cases` (200))."""
    from forge_assets.config import EvalConfig, GatesConfig

    cls, prefix = (GatesConfig, "gates") if section == "gates" else (EvalConfig, "eval")
    obj = cls()
    for part in name.split("."):
        obj = getattr(obj, part)
    shown = str(obj).lower() if isinstance(obj, bool) else obj
    return f"`{prefix}.{name}` ({shown})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def metrics_table(reg: Registry | None = None) -> str:
    rows = ["| figure | what it measures | settings | `forge status` |", "|---|---|---|---|"]
    for m in (reg or registry()).metrics:
        keys = ", ".join(f"`{k}`" for k in m.keys)
        settings = ", ".join(_default("eval", s) for s in m.settings) or "-"
        status = ", ".join(s.label for s in m.status) or "-"
        rows.append(f"| {keys} | {_cell(m.description)} | {settings} | {status} |")
    return "\n".join(rows)


def gates_table(reg: Registry | None = None) -> str:
    rows = ["| check | on | fails when | settings |", "|---|---|---|---|"]
    for g in (reg or registry()).gates:
        settings = ", ".join(_default("gates", s) for s in g.settings) or "-"
        rows.append(f"| `{g.name}` | `{g.asset}` | {_cell(g.fails_when)} | {settings} |")
    return "\n".join(rows)


def _tables(reg: Registry | None = None) -> dict[str, str]:
    return {"metrics": metrics_table(reg), "gates": gates_table(reg)}


def render_docs(text: str, reg: Registry | None = None, source: str = "docs/evaluation.md") -> str:
    """`text` with the generated tables put between their `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers."""
    for name, table in _tables(reg).items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise ValueError(f"{source}: needs exactly one `{begin}` followed by one `{end}` (the {name} table goes between them). "
                             f"Fix: put the two marker lines back, then run `{COMMAND}`.")
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n<!-- generated by `{COMMAND}` from forge_assets/evaluation/metrics/; do not edit -->\n{table}\n{end}{rest.split(end, 1)[1]}"
    return text


def write_docs(path: Path = DOCS) -> bool:
    """Regenerate the tables in `path`; whether it changed."""
    from forge_assets.files import atomic_write

    old = path.read_text(encoding="utf-8")
    new = render_docs(old, source=str(path))
    if new != old:
        atomic_write(path, new, mode=0o644)
    return new != old
