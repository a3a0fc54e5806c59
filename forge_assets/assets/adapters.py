"""Stage 5: adapter, a LoRA adapter per language trained on its dataset (PEFT or mlx-lm).

A new adapter is a *candidate*: it is promoted only when `eval_scores` finds it passes the gate.
"""

from dagster import AssetExecutionContext, MetadataValue, asset

from forge_assets.artifacts import input_key
from forge_assets.assets.common import materialized
from forge_assets.assets.isolation import run_step
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.training.base_model import model_folder

CODE_VERSION = "2"  # 2: PEFT trains on fitted, loss-masked, packed samples


@asset(partitions_def=language_partitions, group_name="training", deps=["dataset", "base_model"], code_version=CODE_VERSION, pool="train")
def adapter(context: AssetExecutionContext, forge: ForgeResource):
    """A LoRA adapter that specialises the base model in one language's code and sessions."""
    cfg = forge.load()
    store = forge.store(cfg)
    language = context.partition_key
    data = store.require("dataset", language)
    base = store.require("base_model", "all")
    key = input_key(dataset=data.version, base=base.version, training=cfg.training.model_dump(), code=CODE_VERSION)
    if (art := store.reusable("adapter", language, key)) is not None:
        context.log.info(f"adapter {art.version} was trained on these very inputs; reusing it.")
        store.mark_candidate(art)  # eval_scores judges what this run produced
        return materialized(art, _figures(art.manifest()["result"]), reused=True)
    manifest = {"input_key": key, "inputs": {"dataset": data.version, "base_model": base.version}, "training": cfg.training.model_dump()}
    with store.workdir("adapter") as work, store.write("adapter", language, manifest, promote=False) as out:
        # Training runs torch / mlx in its own process (Dagster Pipes): a crash or OOM kill fails this step only.
        result = run_step(context, forge, "train_adapter", {"base": str(model_folder(base.path)), "dataset": str(data.path),
                                                           "out": str(out.path), "training": cfg.training.model_dump()}, work)
        manifest["result"] = result
    return materialized(out.artifact, _figures(result))


def _figures(result: dict) -> dict:
    curve = result.get("loss_curve", [])
    return {
        "backend": result["backend"],
        "steps": result["steps"],
        "train_samples": result["train_samples"],
        "first_loss": curve[0][1] if curve else float("nan"),
        "final_loss": curve[-1][1] if curve else float("nan"),
        "training_seconds": result["seconds"],
        "loss_curve": MetadataValue.json({"step": [s for s, _ in curve], "loss": [l for _, l in curve]}),
        "promoted": False,  # until eval_scores' gate passes
        # PEFT's packing figures (absent for mlx-lm, which trains on its own padded batches)
        **{k: result[k] for k in ("train_on", "packing_efficiency", "token_coverage", "epochs_run", "trained_tokens",
                                  "trained_tokens_per_second", "fim_trimmed", "samples_split") if result.get(k) is not None},
    }
