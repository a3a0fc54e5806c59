"""Stage 5: adapter, a LoRA-family adapter per language trained on its dataset (PEFT or mlx-lm).

A new adapter is a *candidate*: it is promoted only when `eval_scores` finds it passes the gate.
Training checkpoints live in `<root>/adapter/<lang>/.checkpoints/<input key>/`, so re-materializing
after a crash or `kill -9` resumes there; they are removed once the adapter is stored.
"""

from dagster import AssetExecutionContext, AssetObservation, MetadataValue, asset

from forge_assets.assets.common import materialized, reuse
from forge_assets.assets.isolation import run_step
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.training.curves import text_chart, thin
from forge_assets.training.plan import CODE_VERSION, adapter_plan, finish_adapter


@asset(partitions_def=language_partitions, group_name="training", deps=["dataset", "base_model"], code_version=CODE_VERSION, pool="train")
def adapter(context: AssetExecutionContext, forge: ForgeResource):
    """A LoRA adapter that specialises the base model in one language's code and sessions."""
    cfg, store, language = forge.partition(context)
    plan = adapter_plan(cfg, store, language)  # inputs, key, manifest, step arguments (training/plan.py)
    for level, note in plan.notes:
        getattr(context.log, level)(note)
    if plan.stands is not None:
        store.mark_candidate(plan.stands)
        return materialized(plan.stands, _figures(plan.stands.manifest().get("result", {})), reused=True)
    if (art := reuse(context, store, "adapter", language, plan.key, candidate=True)) is not None:  # eval_scores judges what this run produced
        return materialized(art, _figures(art.manifest()["result"]), reused=True)
    plan.clear_stale_checkpoints()
    with store.workdir("adapter") as work, store.write("adapter", language, plan.manifest, promote=False) as out:
        # Training runs torch / mlx in its own process (Dagster Pipes): a crash or OOM kill fails this step only.
        result = run_step(context, forge, "train_adapter", {**plan.args, "out": str(out.path)}, work)
        plan.manifest["result"] = result
    finish_adapter(cfg, store, plan, out.artifact, context.run.run_id, log=context.log.warning)
    _observe(context, result)
    return materialized(out.artifact, _figures(result))


def _observe(context: AssetExecutionContext, result: dict) -> None:
    """Loss points as observations, so the asset's Plots tab in the UI draws the curves (thinned to 60 points)."""
    valid = {int(s): v for s, v in result.get("valid_curve", [])}
    for step, loss in thin(result.get("loss_curve", []), 60):
        meta = {"step": int(step), "train_loss": MetadataValue.float(float(loss))}
        if int(step) in valid and valid[int(step)] is not None:
            meta["valid_loss"] = MetadataValue.float(float(valid[int(step)]))
        context.log_event(AssetObservation(asset_key=context.asset_key, partition=context.partition_key, metadata=meta))


def _figures(result: dict) -> dict:
    curve = result.get("loss_curve", [])
    vcurve = [p for p in result.get("valid_curve", []) if p[1] is not None]
    return {
        "backend": result.get("backend"),
        "method": result.get("method", "lora"),
        "steps": result.get("steps"),
        "train_samples": result.get("train_samples"),
        "first_loss": curve[0][1] if curve else float("nan"),
        "final_loss": curve[-1][1] if curve else float("nan"),
        **({"valid_loss": vcurve[-1][1]} if vcurve else {}),
        "training_seconds": result.get("seconds"),
        "loss_chart": MetadataValue.md(text_chart({"train": thin(curve), **({"valid": vcurve} if vcurve else {})})),
        "loss_curve": MetadataValue.json({"step": [s for s, _ in curve], "loss": [l for _, l in curve],
                                          "valid_step": [s for s, _ in vcurve], "valid_loss": [l for _, l in vcurve]}),
        "promoted": False,  # until eval_scores' gate passes
        **{k: result[k] for k in ("train_on", "precision", "packing_efficiency", "token_coverage", "trained_token_coverage", "prompt_trimmed", "answers_truncated", "epochs_run", "trained_tokens",
                                  "trained_tokens_per_second", "fim_trimmed", "samples_split", "gradient_accumulation",
                                  "fim_scheme", "fim_samples_skipped", "fim_skipped",
                                  "resumed_from", "new_samples", "replayed_samples", "setup_seconds", "validation_seconds",
                                  "validation_batches", "peak_rss_mb", "cuda_peak_memory_mb", "mlx_peak_memory_mb") if result.get(k) is not None},
        # Samples fitting to seq_len left out, by reason (never silently: the training log says the same).
        **({"samples_dropped": MetadataValue.json(result["samples_dropped"])} if result.get("samples_dropped") is not None else {}),
    }
