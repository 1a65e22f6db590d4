"""Toy model and batch source for the trainer tests, and the script those tests launch.

Launched as `python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py ...` it trains
the toy under DDP (gloo); launched as plain `python tests/ddp_worker.py --kill-at-step K` it
SIGKILLs itself mid-run, like an OOM-killed stage. Rank 0 saves the per-step losses and final
state with `--out`.

The toy task is learnable by a bigram model: each sequence follows x[t+1] = (5 x[t] + 3) mod V
from a random start. Each row gets a random-length masked prefix, so micro-batches carry
different numbers of loss tokens (the case loss normalisation must get right).
"""

import argparse
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minimind.training import (
    TrainConfig,
    Trainer,
    cleanup_distributed,
    init_distributed,
    seed_everything,
)

VOCAB_SIZE = 32
SEQ_LEN = 16


@dataclass
class ToyOutput:
    loss: torch.Tensor
    aux_loss: torch.Tensor | None = None


class TinyLM(nn.Module):
    """Embedding -> dropout -> Linear -> LayerNorm -> LM head, with the real model's contract.

    `aux_weight > 0` adds a toy auxiliary loss (mean squared activation over the loss tokens)
    the way the MoE model adds its balance loss: `.aux_loss` is the raw value, and `.loss`
    includes it weighted by this batch's share of the `num_items_in_batch` tokens.
    """

    def __init__(self, dim: int = 16, dropout: float = 0.0, aux_weight: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, dim)
        self.dropout = nn.Dropout(dropout)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB_SIZE, bias=False)
        self.aux_weight = aux_weight

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> ToyOutput:
        hidden = self.norm(torch.relu(self.mix(self.dropout(self.embed(input_ids)))))
        logits = self.head(hidden)[:, :-1]
        targets = labels[:, 1:]
        is_loss_token = targets != -100
        num_tokens = is_loss_token.sum()
        denominator = num_tokens.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        token_losses = F.cross_entropy(
            logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1), ignore_index=-100,
            reduction="sum",
        )
        loss = token_losses / denominator
        if self.aux_weight == 0:
            return ToyOutput(loss)
        aux_loss = hidden[:, :-1].pow(2).mean(-1)[is_loss_token].sum() / num_tokens.clamp(min=1)
        return ToyOutput(loss + self.aux_weight * aux_loss * num_tokens / denominator, aux_loss)


class ToyBatches:
    """Deterministic infinite batch source; row i of the global stream depends only on (seed, i).

    Call c on rank r of W reads rows starting at (c W + r) b, so W ranks x micro-batch b see the
    same global batch as 1 rank x micro-batch W b, and accumulation over 2 calls of b rows equals
    one call of 2b rows.
    """

    def __init__(
        self, micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0
    ) -> None:
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.calls = 0

    def __iter__(self) -> "ToyBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        first = (self.calls * self.world_size + self.rank) * self.micro_batch_size
        rows = [self.row(index) for index in range(first, first + self.micro_batch_size)]
        self.calls += 1
        return {
            "input_ids": torch.stack([ids for ids, _ in rows]),
            "labels": torch.stack([labels for _, labels in rows]),
        }

    def row(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        token = int(torch.randint(VOCAB_SIZE, (1,), generator=generator))
        ids = []
        for _ in range(SEQ_LEN):
            ids.append(token)
            token = (5 * token + 3) % VOCAB_SIZE
        input_ids = torch.tensor(ids)
        labels = input_ids.clone()
        masked_prefix = int(torch.randint(SEQ_LEN - 1, (1,), generator=generator))
        labels[:masked_prefix] = -100
        return input_ids, labels

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def toy_config(**overrides: Any) -> TrainConfig:
    """The tests' training config; workers and in-process runs must build identical ones."""
    settings: dict[str, Any] = {
        "max_steps": 8,
        "micro_batch_size": 4,
        "lr": 1e-2,
        "warmup_steps": 2,
        "dtype": "float32",
        "log_every": 1,
        "eval_every": 0,
        "checkpoint_every": 4,
        "seed": 7,
    }
    return TrainConfig(**(settings | overrides))


def toy_trainer(
    config: TrainConfig,
    checkpoint_dir: Path,
    *,
    model_seed: int = 0,
    dropout: float = 0.0,
    aux_weight: float = 0.0,
    **trainer_kwargs: Any,
) -> Trainer:
    """A CPU Trainer on TinyLM and this rank's ToyBatches; model_seed decides the init."""
    rank, world_size, _ = init_distributed()
    seed_everything(model_seed)
    model = TinyLM(dropout=dropout, aux_weight=aux_weight)
    batches = ToyBatches(config.micro_batch_size, rank=rank, world_size=world_size)
    return Trainer(model, config, batches, checkpoint_dir, device="cpu", **trainer_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--grad-accum-steps", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--aux-weight", type=float, default=0.0)
    parser.add_argument("--kill-at-step", type=int, help="SIGKILL this process at this step")
    args = parser.parse_args()

    config = toy_config(
        max_steps=args.max_steps,
        micro_batch_size=args.micro_batch_size,
        grad_accum_steps=args.grad_accum_steps,
    )
    losses: dict[int, float] = {}

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        losses[step] = metrics["loss"]
        if step == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    model_options = {"dropout": args.dropout, "aux_weight": args.aux_weight}
    trainer = toy_trainer(config, args.checkpoint_dir, log_metrics=log_metrics, **model_options)
    trainer.fit()

    # Every rank must load the final checkpoint: a fresh, differently initialised trainer on
    # the same directory resumes at the end with the trained weights.
    resumed = toy_trainer(config, args.checkpoint_dir, model_seed=999, **model_options)
    assert resumed.step == config.max_steps, resumed.step
    for name, value in trainer.raw_model.state_dict().items():
        assert torch.equal(value, resumed.raw_model.state_dict()[name]), name

    if trainer.rank == 0 and args.out:
        torch.save({"losses": losses, "model": trainer.raw_model.state_dict()}, args.out)
    cleanup_distributed()


if __name__ == "__main__":
    main()
