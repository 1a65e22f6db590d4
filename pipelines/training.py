"""What the training stages (pretrain, sft, and later dpo/align) share besides the Trainer:
their params shape, saving a model folder atomically, and tidying stale checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from minimind.training.trainer import TrainConfig


class TrainingStageParams(BaseModel):
    """The common part of a training stage's params section."""

    model_config = ConfigDict(extra="forbid")

    nproc: int = Field(default=1, ge=1, description="processes; > 1 runs under torchrun (DDP)")
    train: TrainConfig


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Write a Hugging Face folder (config, safetensors, tokenizer) atomically."""
    from pipelines.atomic import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def prune_checkpoints(current: Path) -> None:
    """Remove sibling checkpoint folders of other params/inputs: they can never be resumed."""
    for sibling in current.parent.iterdir():
        if sibling.is_dir() and sibling != current:
            shutil.rmtree(sibling, ignore_errors=True)


def flops_per_token(num_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter plus attention scores (PaLM appendix B)."""
    return 6.0 * num_params + 12.0 * num_layers * hidden_size * seq_len
