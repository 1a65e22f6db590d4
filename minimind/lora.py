"""LoRA: low-rank adapters on chosen linear layers, trained while the base weights stay frozen.

Each targeted `nn.Linear` W becomes W x + (alpha / r) * B A x with A (r x in) and B (out x r);
B starts at zero so the adapted model starts exactly equal to the base model. After training,
`merge_lora` folds B A into W and puts plain `nn.Linear` layers back, so downstream stages,
exports and servers see an ordinary model with unchanged parameter names.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class LoRAConfig(BaseModel):
    """The `sft.lora` params: off by default (full fine-tuning)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    rank: int = Field(default=8, ge=1, description="adapter rank r")
    alpha: float = Field(default=16.0, gt=0, description="scale: updates are (alpha / r) B A x")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="linear layers (by attribute name) that get adapters")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises weights
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T
        return self.base(x) + update * self.scaling

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight."""
        with torch.no_grad():
            self.base.weight += (self.lora_B @ self.lora_A) * self.scaling
        return self.base


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every targeted linear layer in LoRA and freeze everything else; return their names."""
    targets = [name for name, module in model.named_modules()
               if isinstance(module, nn.Linear)
               and name.rsplit(".", 1)[-1] in config.target_modules]
    if not targets:
        raise ValueError(f"no linear layer named any of {config.target_modules}")
    model.requires_grad_(False)
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(getattr(parent, attr), config.rank, config.alpha,
                                         config.dropout))
    return targets


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and restore plain linear layers; return count."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, module.merged())
            merged += 1
    model.requires_grad_(True)
    return merged
