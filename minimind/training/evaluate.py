"""Held-out loss: the number every training stage reports and every comparison rests on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minimind.data.batches import eval_batches
from minimind.data.pretrain_tokens import Row
from minimind.evaluation import spread


@torch.no_grad()
def mean_token_loss(model: nn.Module, rows: Sequence[Row], batch_size: int,
                    max_rows: int | None = None) -> float:
    """Cross-entropy per loss token (nats) over held-out rows, in a fixed order.

    With `max_rows`, the rows are spread evenly over the whole set (not the first ones: stored
    order groups sources, and the first source alone is not the held-out distribution). Summed
    over tokens then divided once, so rows with many loss tokens weigh more — the same
    per-token average the training loss uses. Only tokens whose label is not -100 count (for
    SFT: assistant tokens only).
    """
    if max_rows is not None:
        rows = spread(rows, max_rows)
    return mean_batch_loss(model, eval_batches(rows, batch_size))


@torch.no_grad()
def mean_batch_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Cross-entropy per loss token (nats) over ready-made batches (see `mean_token_loss`).

    Every key of a batch but `labels` is passed to the model, so batches may carry extra
    inputs (e.g. image features).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")[:, 1:]
        count = int((labels != -100).sum())
        if count == 0:
            continue
        # Cross-entropy from the logits, not `output.loss`: an MoE model adds its router
        # balance loss there, which is a training regulariser, not a property of the text.
        logits = model(**batch).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
        tokens += count
    model.train(was_training)
    if tokens == 0:
        raise ValueError("no loss tokens in the held-out rows")
    return total / tokens
