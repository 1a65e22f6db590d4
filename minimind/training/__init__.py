"""Training engine shared by every training stage: one `Trainer`, configured by `TrainConfig`."""

from minimind.training.checkpoint import seed_everything
from minimind.training.schedule import lr_multiplier
from minimind.training.trainer import (
    TrainConfig,
    Trainer,
    cleanup_distributed,
    init_distributed,
    param_groups,
)

__all__ = [
    "TrainConfig",
    "Trainer",
    "cleanup_distributed",
    "init_distributed",
    "lr_multiplier",
    "param_groups",
    "seed_everything",
]
