"""dpo: direct preference optimisation of the SFT model, with itself as the frozen reference.

The reference's log-probs of every pair are computed once, before training (the reference
never changes, so running it every step would only cost time). metrics/dpo.json holds the
held-out preference accuracy of the implicit reward before (the SFT model against itself:
every pair a tie, 0.5) and after training, and the reward margin; the per-step loss, reward
accuracy and margin are in the stage's MLflow run.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage

TOKENS_DIR = Path("data/tokens/dpo")
BASE_DIR = Path("models/sft")
MODEL_DIR = Path("models/dpo")
METRICS = Path("metrics/dpo.json")


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import minimind.model  # noqa: F401 - registers MiniMind with the Auto classes
    from minimind.data.dpo_tokens import DPODataset, PairBatchStream
    from minimind.dpo import (
        DPOPolicy,
        ReferencedPairs,
        count_pairs,
        preference_accuracy,
        reference_logps,
    )
    from minimind.training import Trainer, cleanup_distributed, init_distributed
    from pipelines.plots import CurveRecorder, finish_curves
    from pipelines.training import prune_checkpoints, save_model

    opts = ctx.params.dpo
    batch = opts.train.micro_batch_size
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(BASE_DIR))
    model = AutoModelForCausalLM.from_pretrained(ctx.path(BASE_DIR), dtype=torch.float32)
    rank, world_size, device = init_distributed()
    model.to(device)
    train_pairs = DPODataset(ctx.path(TOKENS_DIR / "train"))
    val_pairs = DPODataset(ctx.path(TOKENS_DIR / "val"))
    # Before the Trainer exists: on resume it loads the trained policy into `model`.
    train_reference = reference_logps(model, train_pairs, batch)
    val_reference = reference_logps(model, val_pairs, batch)

    def evaluate(policy: torch.nn.Module) -> dict[str, float]:
        held_out = preference_accuracy(policy.model, val_reference, val_pairs, batch, opts.beta)
        return {f"val_{name}": value for name, value in held_out.items()}

    policy = DPOPolicy(model, opts.beta)
    before = evaluate(policy)
    if rank == 0:
        print(f"[dpo] {len(train_pairs):,} train / {len(val_pairs):,} held-out pairs; held-out "
              f"reward accuracy before: {before['val_reward_accuracy']:.3f}", flush=True)
    batches = PairBatchStream(ReferencedPairs(train_pairs, train_reference), batch,
                              seed=opts.train.seed, rank=rank, world_size=world_size)
    curve = CurveRecorder(ctx.run.log_metrics, ctx.checkpoint_dir())
    if rank == 0:
        curve(before, 0)  # the held-out curve starts at the reference point
    trainer = Trainer(policy, opts.train, batches, ctx.checkpoint_dir(),
                      log_metrics=curve, evaluate=evaluate,
                      count_items=count_pairs)
    final = trainer.fit()
    if rank == 0:
        save_model(trainer.raw_model.model, tokenizer, ctx.path(MODEL_DIR))
        metrics = {
            "val_reward_accuracy_before": round(before["val_reward_accuracy"], 4),
            "val_reward_accuracy": round(final["val_reward_accuracy"], 4),
            "val_reward_margin_before": round(before["val_reward_margin"], 4),
            "val_reward_margin": round(final["val_reward_margin"], 4),
            "train_loss": round(final["loss"], 4),
            "pairs": len(train_pairs),
            "beta": opts.beta,
        }
        ctx.write_metrics(METRICS, metrics)
        finish_curves(ctx, curve, ["loss", "reward_accuracy", "reward_margin"],
                      ["val_reward_accuracy", "val_reward_margin"])
        prune_checkpoints(ctx.checkpoint_dir())
        print(f"[dpo] held-out reward accuracy {metrics['val_reward_accuracy_before']:.3f} -> "
              f"{metrics['val_reward_accuracy']:.3f}, margin {metrics['val_reward_margin']:.3f}; "
              f"model saved to {MODEL_DIR}", flush=True)
    cleanup_distributed()


if __name__ == "__main__":
    run_stage("dpo", main, __doc__, processes=lambda params: params.dpo.nproc)
