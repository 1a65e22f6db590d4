"""align: teach the SFT model to see, from cached image features (MiniMind-V's two phases).

Phase 1 trains the projector alone (the LLM frozen, and checked bit-identical afterwards) on
`align.phase1.sources`, so image features land where the LLM's embeddings live. Phase 2 trains
the projector with the LLM layers `align.phase2.llm_layers` chooses on
`align.phase2.sources` (question answering). Training reads data/features/vision only: no
encoder runs here. Each phase checkpoints to its own folder under checkpoints/align/<identity>/,
so a killed run resumes inside the phase it died in. Writes models/vlm/ (a Hugging Face folder:
config, safetensors, tokenizer; `AutoModelForCausalLM` loads it after `import minimind.model`)
and metrics/align.json: per phase the held-out loss before and after, the final training loss,
records, tokens and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean/vlm")
FEATURES_DIR = Path("data/features/vision")
BASE_DIR = Path("models/sft")
MODEL_DIR = Path("models/vlm")
METRICS = Path("metrics/align.json")


def train_phase(ctx: StageContext, name: str, model: Any, phase: Any,
                trainable: Callable[[str], bool], tokenizer: Any, store: Any,
                curve: Callable[[dict[str, float], int], None], first_step: int
                ) -> dict[str, Any]:
    """Train `model` in place for one phase; return the phase's metrics."""
    from minimind.data.vlm_tokens import VLMBatchStream, VLMDataset, eval_vlm_batches
    from minimind.training import Trainer
    from minimind.training.evaluate import mean_batch_loss

    started = time.perf_counter()
    opts = ctx.params.align
    batch = phase.train.micro_batch_size
    data = {split: VLMDataset.from_clean(ctx.path(CLEAN_DIR), split, tokenizer, store,
                                         opts.max_len, phase.sources)
            for split in ("train", "val")}

    def evaluate(m: Any) -> dict[str, float]:
        return {"val_loss": mean_batch_loss(m, eval_vlm_batches(data["val"], batch,
                                                                opts.eval_rows))}

    def log(metrics: dict[str, float], step: int) -> None:  # one curve across both phases
        curve(metrics, first_step + step)

    before = evaluate(model)["val_loss"]
    stats = data["train"].stats
    print(f"[align] {name}: {stats['records']:,} train / {len(data['val']):,} held-out records "
          f"of {', '.join(phase.sources)} ({stats['images']:,} images, {stats['tokens']:,} "
          f"tokens); held-out loss before: {before:.4f}", flush=True)
    log({"val_loss": before}, 0)
    batches = VLMBatchStream(data["train"], batch, seed=phase.train.seed)
    trainer = Trainer(model, phase.train, batches, ctx.checkpoint_dir() / name,
                      log_metrics=log, evaluate=evaluate, trainable=trainable,
                      forward_kwargs={"loss_only": True})
    final = trainer.fit()
    return {
        "val_loss_before": round(before, 4),
        "val_loss": round(final["val_loss"], 4),
        "train_loss": round(final["loss"], 4),
        "records": stats["records"],
        "val_records": len(data["val"]),
        "tokens": stats["tokens"],
        "trained_tokens": stats["trained_tokens"],
        "images": stats["images"],
        "dropped": {reason: stats[reason] for reason in stats if reason.startswith("dropped")},
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": phase.train.max_steps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoTokenizer

    from minimind.data.features import FeatureStore
    from minimind.data.vlm_tokens import IMAGE_PAD
    from minimind.model.vlm import MiniMindVLM, load_language_model, trainable_filter
    from pipelines.plots import CurveRecorder, finish_curves
    from pipelines.training import prune_checkpoints, save_model

    opts = ctx.params.align
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(BASE_DIR))
    store = FeatureStore(ctx.path(FEATURES_DIR))
    llm = load_language_model(ctx.path(BASE_DIR))
    torch.manual_seed(opts.phase1.train.seed)  # the projector's initial weights
    model = MiniMindVLM.from_language_model(
        llm, store.feature_dim, store.num_tokens, tokenizer.convert_tokens_to_ids(IMAGE_PAD),
        store.encoder)
    print(f"[align] {store.encoder.get('encoder')}: {store.num_tokens} tokens x "
          f"{store.feature_dim} per image; projector "
          f"{sum(p.numel() for p in model.projector.parameters()) / 1e6:.2f}M parameters",
          flush=True)
    curve = CurveRecorder(ctx.run.log_metrics, ctx.checkpoint_dir())
    metrics = {"phase1": train_phase(ctx, "phase1", model, opts.phase1,
                                     trainable_filter(model.config, "none"), tokenizer, store,
                                     curve, 0)}
    unchanged = all(torch.equal(value, llm.state_dict()[key].to(value.device))
                    for key, value in model.language_model.state_dict().items())
    if not unchanged:
        raise RuntimeError("the LLM changed during phase 1, which must train the projector only")
    metrics["phase1"]["llm_unchanged"] = unchanged
    del llm
    metrics["phase2"] = train_phase(
        ctx, "phase2", model, opts.phase2,
        trainable_filter(model.config, opts.phase2.llm_layers, opts.phase2.train_embeddings),
        tokenizer, store, curve, opts.phase1.train.max_steps)
    metrics["seconds"] = round(metrics["phase1"]["seconds"] + metrics["phase2"]["seconds"], 1)
    save_model(model, tokenizer, ctx.path(MODEL_DIR))
    ctx.write_metrics(METRICS, metrics)
    finish_curves(ctx, curve, ["loss"], ["val_loss"])
    prune_checkpoints(ctx.checkpoint_dir())
    print(f"[align] held-out loss: phase 1 {metrics['phase1']['val_loss_before']:.4f} -> "
          f"{metrics['phase1']['val_loss']:.4f}, phase 2 "
          f"{metrics['phase2']['val_loss_before']:.4f} -> {metrics['phase2']['val_loss']:.4f}; "
          f"model saved to {MODEL_DIR}", flush=True)


if __name__ == "__main__":
    run_stage("align", main, __doc__)
