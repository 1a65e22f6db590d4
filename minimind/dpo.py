"""Direct preference optimisation (DPO) against a frozen reference, trained by the shared Trainer.

DPO turns preference pairs straight into a loss, without a reward model: with log-probabilities
of the whole answer under the policy (p) and a frozen reference (r, the SFT model), the
implicit reward of an answer is beta * (p - r), and each pair costs
-log sigmoid(reward(chosen) - reward(rejected)). Minimising it raises the chosen answer relative
to the rejected one, and beta sets how far the policy may drift from the reference to do so.

The reference never changes, so its log-probabilities are computed once, before training
(`reference_logps`), and travel with the rows (`ReferencedPairs`): a step runs one model, not
two, and holds one in memory. Compute them before the Trainer is built, from the SFT weights:
a resumed Trainer loads the trained policy into the model it is given.

`DPOPolicy` adapts the policy to the Trainer's contract: `.loss` is the sum of per-pair losses
divided by the step's pair count N (the Trainer counts pairs with `count_items=count_pairs`), so
accumulation and DDP give the mean over the global batch of pairs; `.metrics` carries the
reward statistics the Trainer logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from minimind.data.dpo_tokens import Pairs, eval_pair_batches
from minimind.data.pretrain_tokens import IGNORE_INDEX, Row


class DPOConfig(BaseModel):
    """DPO objective settings (part of the `dpo` stage params)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="Scale of the implicit reward beta * (log p_policy - log p_ref); smaller "
        "lets the policy move further from the reference.",
    )


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's label tokens, (batch,) in float32.

    Labels are aligned with the inputs (Hugging Face convention): position t predicts
    labels[t + 1]; IGNORE_INDEX positions count for nothing.
    """
    targets = labels[:, 1:]
    token_nll = F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return -token_nll.view_as(targets).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss per pair, and the (detached) implicit rewards of both sides.

    All inputs are (pairs,) summed answer log-probabilities. A pair on which the policy still
    equals the reference costs log(2).
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """Means over pairs: reward accuracy (a tie counts half), both rewards and their margin.

    A tie is a pair the policy has not separated from the reference yet: counting it half
    makes an untrained policy score the chance level 0.5, not 0 or 1.
    """
    margins = chosen_rewards - rejected_rewards
    wins = (margins > 0).float() + 0.5 * (margins == 0).float()
    return {
        "reward_accuracy": wins.mean(),
        "reward_margin": margins.mean(),
        "chosen_reward": chosen_rewards.mean(),
        "rejected_reward": rejected_rewards.mean(),
    }


def count_pairs(batch: dict[str, torch.Tensor]) -> int:
    """Pairs in a batch from `collate_pairs`: the Trainer's `count_items` for DPO."""
    return batch["input_ids"].shape[0] // 2


# ---------------------------------------------------------------------------- frozen reference


@torch.no_grad()
def pair_logps(model: nn.Module, pairs: Pairs, batch_size: int) -> np.ndarray:
    """Summed answer log-probabilities under `model`: (pairs, 2) float32, columns chosen,
    rejected. Runs in eval mode (no dropout) in stored order; the mode is restored after.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for batch in eval_pair_batches(pairs, batch_size):
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        logps = sequence_logps(logits, batch["labels"].to(device))
        chunks.append(torch.stack(logps.chunk(2), dim=1).cpu())
    model.train(was_training)
    return torch.cat(chunks).numpy()


def reference_logps(model: nn.Module, pairs: Pairs, batch_size: int) -> np.ndarray:
    """The frozen reference's log-probabilities of every pair, (pairs, 2): computed once.

    Call it with the reference (SFT) weights before building the Trainer, under the autocast
    the training will use (bf16 on GPU), so that the policy's first step differs from its
    reference only by rounding. Every DDP rank may compute it: it is one forward pass over the
    pairs, a third of the cost of one training epoch.
    """
    return pair_logps(model, pairs, batch_size)


class ReferencedPairs:
    """Pairs whose rows also carry `ref_chosen_logps` and `ref_rejected_logps` (float32)."""

    def __init__(self, pairs: Pairs, ref_logps: np.ndarray) -> None:
        if ref_logps.shape != (len(pairs), 2):
            raise ValueError(f"reference log-probs of shape {ref_logps.shape} do not match "
                             f"{len(pairs)} pairs")
        self.pairs = pairs
        self.ref_logps = ref_logps.astype(np.float32)
        self.pad_id = pairs.pad_id

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Row:
        ref_chosen, ref_rejected = self.ref_logps[i]
        return {**self.pairs[i], "ref_chosen_logps": ref_chosen,
                "ref_rejected_logps": ref_rejected}


# ---------------------------------------------------------------------------- training


@dataclass
class DPOOutput:
    """What `DPOPolicy` returns to the Trainer."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_loss: torch.Tensor | None = None


class DPOPolicy(nn.Module):
    """The policy model under the DPO objective, in the Trainer's model contract.

    Its forward takes a `collate_pairs` batch of `ReferencedPairs` rows. `.metrics` are 0-d
    tensors (means over this micro-batch's pairs; the Trainer reads them once per step):
    `reward_accuracy`, `reward_margin`, `chosen_reward`, `rejected_reward`. The DPO loss itself
    is the Trainer's `loss`. An MoE policy's balance loss is added like the model adds it to its
    LM loss, weighted by this micro-batch's share of the N pairs.
    """

    def __init__(self, model: nn.Module, beta: float) -> None:
        super().__init__()
        self.model = model
        self.beta = beta

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> DPOOutput:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        policy_chosen, policy_rejected = sequence_logps(output.logits, labels).chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen, policy_rejected, ref_chosen_logps, ref_rejected_logps, self.beta
        )
        denominator = len(losses) if num_items_in_batch is None else num_items_in_batch
        loss = losses.sum() / denominator
        aux_loss = getattr(output, "aux_loss", None)
        if aux_loss is not None:
            loss = loss + self.model.config.router_aux_loss_coef * aux_loss * (
                len(losses) / denominator
            )
        return DPOOutput(loss, reward_metrics(chosen_rewards, rejected_rewards), aux_loss)


# ---------------------------------------------------------------------------- evaluation


def preference_accuracy(model: nn.Module, ref_logps: np.ndarray, pairs: Pairs,
                        batch_size: int, beta: float) -> dict[str, float]:
    """How well the implicit reward of `model` (the bare policy LM) ranks held-out pairs.

    Returns `reward_accuracy` (share of pairs with reward(chosen) > reward(rejected), ties
    half), `reward_margin`, `chosen_reward`, `rejected_reward` (means) and `loss` (mean DPO
    loss). `ref_logps` are the reference's `reference_logps` of the same pairs.
    """
    policy = torch.from_numpy(pair_logps(model, pairs, batch_size))
    reference = torch.from_numpy(ref_logps.astype(np.float32))
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta
    )
    metrics = {**reward_metrics(chosen_rewards, rejected_rewards), "loss": losses.mean()}
    return {name: float(value) for name, value in metrics.items()}
