"""Stage 7: gguf, what llama.cpp serves for a language: the shared base GGUF + the adapter as a LoRA GGUF (or, with
deploy.merge, the adapter merged into the base it was trained on), converted with gguf-py and quantized by llama.cpp.

The shipped file is scored: its perplexity through llama.cpp on held-out text against the reference's (the unquantized
base GGUF with the LoRA GGUF applied) on the same tokens. The gate `quantization_loss` (gates.max_quantization_loss_pct) is a blocking check on this asset:
a GGUF that loses more is written as a candidate, never promoted, and never deployed.
"""

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, asset

from forge_assets.artifacts import input_key
from forge_assets.assets.common import gated_adapter, materialized, md_table, reuse
from forge_assets.assets.isolation import run_step
from forge_assets.evaluation import metrics
from forge_assets.evaluation.gate import judge_gguf
from forge_assets.export.plan import base_gguf_folder, needs_merge
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.training.base_model import model_folder

CODE_VERSION = "6"  # 6: scored against the unquantized base GGUF + LoRA GGUF; 3: base GGUF + LoRA GGUF unless deploy.merge; 4: streamed converter, scored against the unquantized GGUF; 5: base GGUF folder named by this version


@asset(partitions_def=language_partitions, group_name="export", deps=["adapter", "base_model", "eval_scores"], code_version=CODE_VERSION,
       check_specs=[AssetCheckSpec(name, asset="gguf", blocking=True, description=text) for name, text in metrics.descriptions("gguf").items()])
def gguf(context: AssetExecutionContext, forge: ForgeResource):
    """A quantized GGUF of the base model with the language's adapter merged in, proven to load in llama.cpp and scored against the unquantized base + LoRA."""
    cfg, store, language = forge.partition(context)
    qtype = cfg.deploy.quantization
    ev, ad = gated_adapter(store, language, cfg.gates)
    base = store.get("base_model", "all", ad.manifest()["inputs"]["base_model"])  # the base this adapter was trained on
    data = store.get("dataset", language, ev.manifest()["inputs"]["dataset"])  # the held-out text eval_scores used
    extra = sorted(set(cfg.eval.extra_quantizations) - {qtype})
    # Merged for a target that serves merged files (Ollama) or with deploy.merge; else the shared base GGUF + a LoRA GGUF.
    merge, inter = needs_merge(cfg.deploy), cfg.deploy.gguf_intermediate
    base_folder = base_gguf_folder(store.root, base.version, qtype, inter)
    key = input_key(adapter=ad.version, base=base.version, quantization=qtype, dataset=data.version, extra=extra, merge=merge, intermediate=inter,
                    windows=[cfg.eval.gguf_windows, cfg.eval.gguf_window_tokens], code=CODE_VERSION)
    reused = (art := reuse(context, store, "gguf", language, key, candidate=True)) is not None
    if reused:
        figures = art.manifest()["figures"]
    else:
        manifest = {"input_key": key, "inputs": {"adapter": ad.version, "base_model": base.version, "eval_scores": ev.version,
                                                 "dataset": data.version}, "quantization": qtype}
        with store.workdir("gguf") as work, store.write("gguf", language, manifest, promote=False) as out:
            # Merging, conversion, quantization, llama.cpp's load-and-generate smoke test and scoring run in their own process.
            figures = run_step(context, forge, "export_gguf", {
                "base": str(model_folder(base.path)), "adapter": str(ad.path), "out": str(out.path), "work": str(work),
                "quantization": qtype, "name": f"{cfg.deploy.tag_prefix}-{language}", "dataset": str(data.path),
                "extra_quantizations": extra, "windows": cfg.eval.gguf_windows, "window_tokens": cfg.eval.gguf_window_tokens,
                "merge": merge, "base_folder": str(base_folder), "intermediate": inter}, work)
            manifest["figures"] = figures
        art = out.artifact
    verdict = judge_gguf(figures, cfg.gates)
    rolled_back = art.version in store.rolled_back("gguf", language)
    if verdict.passed and not rolled_back:
        store.promote(art)
    elif rolled_back:
        context.log.warning(f"gguf {art.version} for `{language}` was rolled back with `forge rollback`, so it is not promoted again "
                            f"and what is served stays. Fix: `forge rollback --language {language} --to {art.version[:12]}` to serve it.")
    else:
        context.log.error(f"gate {verdict.name} failed: {verdict.message}")
    check = AssetCheckResult(check_name=verdict.name, passed=verdict.passed, severity=AssetCheckSeverity.ERROR, description=verdict.message,
                             metadata={**{k: float(v) for k, v in verdict.figures.items() if isinstance(v, (int, float))}, "gguf_version": art.version})
    shown = {k: v for k, v in figures.items() if k not in ("tensor_types", "quantization_loss_by_type")}
    return materialized(art, {**shown, "tensor_types": md_table(figures.get("tensor_types", {}), "type", "tensors"),
                              "quantization_loss_by_type": md_table(figures.get("quantization_loss_by_type", {}), "type", "loss %"),
                              "promoted": verdict.passed and not rolled_back}, reused=reused, check_results=[check])

