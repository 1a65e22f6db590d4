"""One alignment phase, shared by the vision (align) and omni (align_omni) stages.

A phase trains the parameters `trainable` accepts on a tokenized multimodal train split,
evaluates held-out loss before and after, logs one curve across phases, and checkpoints to
its own folder under the stage's checkpoint dir, so a killed run resumes inside the phase it
died in. Both stages read cached features only: no encoder runs while training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.stage import StageContext

if TYPE_CHECKING:
    from minimind.data.vlm_tokens import VLMDataset


def train_phase(ctx: StageContext, name: str, model: Any, phase: Any,
                trainable: Callable[[str], bool], data: dict[str, VLMDataset], eval_rows: int,
                curve: Callable[[dict[str, float], int], None], first_step: int,
                lr_scale: Callable[[str], float] | None = None) -> dict[str, Any]:
    """Train `model` in place for one phase on data["train"]; return the phase's metrics.

    `lr_scale` (parameter name -> factor on the phase's lr) goes to the Trainer; see
    `projector_lr_scale`.
    """
    from minimind.data.vlm_tokens import VLMBatchStream, eval_vlm_batches
    from minimind.training import Trainer
    from minimind.training.evaluate import mean_batch_loss

    started = time.perf_counter()
    batch = phase.train.micro_batch_size

    def evaluate(m: Any) -> dict[str, float]:
        return {"val_loss": mean_batch_loss(m, eval_vlm_batches(data["val"], batch, eval_rows))}

    def log(metrics: dict[str, float], step: int) -> None:  # one curve across the phases
        curve(metrics, first_step + step)

    before = evaluate(model)["val_loss"]
    stats = data["train"].stats
    print(f"[{ctx.name}] {name}: {stats['records']:,} train / {len(data['val']):,} held-out "
          f"records of {', '.join(phase.sources)} ({stats['images']:,} images, "
          f"{stats.get('audios', 0):,} clips, {stats['tokens']:,} tokens); held-out loss "
          f"before: {before:.4f}", flush=True)
    log({"val_loss": before}, 0)
    batches = VLMBatchStream(data["train"], batch, seed=phase.train.seed)
    trainer = Trainer(model, phase.train, batches, ctx.checkpoint_dir() / name,
                      log_metrics=log, evaluate=evaluate, trainable=trainable,
                      forward_kwargs={"loss_only": True}, lr_scale=lr_scale)
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
        "audios": stats.get("audios", 0),
        "dropped": {reason: stats[reason] for reason in stats if reason.startswith("dropped")},
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": trainer.config.max_steps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def projector_lr_scale(phase: Any, projectors: tuple[str, ...]
                       ) -> Callable[[str], float] | None:
    """Factor on `phase.train.lr` per parameter name: `phase.projector_lr / train.lr` for the
    projectors (names starting with one of `projectors`), 1 for the LLM; None without a
    `projector_lr`.

    Why: on the embedded scenes a pretrained tiny LLM trained at the projector's rate (3e-3)
    learns shape and count within a hundred steps and in doing so squeezes colour out of the
    image tokens (a linear probe of the projector output drops from 99% to 68%), after which
    colour questions stay at chance; a lower LLM rate keeps colour learnable while the fresh
    projector still moves fast (bench/vqa_learnability.py --llm-lr).
    """
    if phase.projector_lr is None:
        return None
    factor = phase.projector_lr / phase.train.lr
    return lambda name: factor if name.startswith(projectors) else 1.0


def read_media_rows(clean_root: Path, split: str, sources: list[str], kinds: dict[str, str]
                    ) -> list[dict[str, Any]]:
    """The clean rows of `sources` (vlm and omni alike) of one split, each source read from
    its kind's folder under data/clean (`kinds`: source name -> kind)."""
    from minimind.data.vlm_tokens import read_vlm_rows

    media = sorted(name for name, kind in kinds.items() if kind in ("vlm", "omni"))
    if unknown := [name for name in sources if name not in media]:
        raise ValueError(f"sources {unknown} are not vlm or omni sources of data.sources "
                         f"(those are {media})")
    rows: list[dict[str, Any]] = []
    for kind in ("vlm", "omni"):
        if names := [name for name in sources if kinds[name] == kind]:
            rows += read_vlm_rows(clean_root / kind, split, names)
    return rows


def finish_alignment(ctx: StageContext, model: Any, tokenizer: Any, metrics: dict[str, Any],
                     curve: Any, model_dir: Path, metrics_path: Path) -> None:
    """Save the aligned model and the stage's metrics and curves, prune the checkpoints to
    the final one, and say where everything went."""
    from pipelines.plots import finish_curves
    from pipelines.training import prune_checkpoints, save_model

    metrics["seconds"] = round(metrics["phase1"]["seconds"] + metrics["phase2"]["seconds"], 1)
    save_model(model, tokenizer, ctx.path(model_dir))
    ctx.write_metrics(metrics_path, metrics)
    finish_curves(ctx, curve, ["loss"], ["val_loss"])
    prune_checkpoints(ctx.checkpoint_dir())
    print(f"[{ctx.name}] held-out loss: phase 1 {metrics['phase1']['val_loss_before']:.4f} -> "
          f"{metrics['phase1']['val_loss']:.4f}, phase 2 "
          f"{metrics['phase2']['val_loss_before']:.4f} -> {metrics['phase2']['val_loss']:.4f}; "
          f"model saved to {model_dir}", flush=True)
