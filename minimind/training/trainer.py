"""The one training loop every training stage shares (pretrain, SFT, DPO, alignment).

A stage hands over a model, a batch source and a `TrainConfig`; the trainer does the rest:
gradient accumulation, AdamW with warmup + cosine, gradient clipping, bf16 autocast on GPU,
optional `torch.compile`, DDP under torchrun, metrics, and atomic checkpoints that let a killed
run resume bit-exactly where it died.

Loss normalisation is the one subtle part. The model returns `sum(item losses) / N` when given
`num_items_in_batch=N`, and the trainer passes the number of items of the whole optimizer step
(all accumulation micro-batches, all DDP ranks). Items are loss tokens for language modelling
and, through `count_items`, whatever else a loss is a mean over (preference pairs for DPO).
Summing the micro-batch gradients then gives exactly the gradient of the mean item loss over
the global batch, however unevenly the items fall across micro-batches. DDP averages gradients
over ranks, so each rank scales its loss by the world size before `backward` to turn that
average back into the sum: 2 ranks x micro-batch b and 1 rank x micro-batch 2b take the same
step, up to float rounding.
"""

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from minimind.training.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    preserved_rng,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from minimind.training.schedule import lr_multiplier

IGNORE_INDEX = -100  # label value that carries no loss

# Dense bf16 tensor-core peak FLOP/s per GPU, matched against the device name in order
# (most specific first: "H100 PCIe" before "H100"). MFU is reported only for these.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
)

logger = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Optimisation settings of one training stage (embedded in params.yaml per stage)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps to train for (or give `epochs`)."
    )
    epochs: float | None = Field(
        default=None, gt=0, description="Passes over the training rows instead of `max_steps`: "
        "the steps follow from the data size, the global batch and `grad_accum_steps`."
    )
    micro_batch_size: int = Field(
        ge=1, description="Sequences per forward pass on each rank (the batch source's size)."
    )
    grad_accum_steps: int = Field(
        default=1, ge=1, description="Micro-batches accumulated into one optimizer step."
    )
    lr: float = Field(gt=0, description="Peak learning rate, reached after warmup.")
    min_lr_ratio: float = Field(
        default=0.1, ge=0, le=1, description="Final learning rate as a fraction of `lr`."
    )
    warmup_steps: int = Field(ge=0, description="Steps of linear warmup before the cosine decay.")
    weight_decay: float = Field(
        default=0.1, ge=0, description="AdamW decoupled weight decay on matrices only."
    )
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW (beta1, beta2).")
    grad_clip: float = Field(
        default=1.0, ge=0, description="Max global gradient norm; 0 disables clipping."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Autocast precision; auto = bf16 on CUDA where supported, else float32.",
    )
    compile: bool = Field(default=False, description="Wrap the model in torch.compile.")
    ddp_find_unused_parameters: bool = Field(
        default=False,
        description="Let DDP tolerate parameters without gradient in a step (e.g. unrouted "
        "MoE experts); costs an extra graph traversal per step.",
    )
    log_every: int = Field(ge=1, description="Steps between metric logs.")
    eval_every: int = Field(ge=0, description="Steps between evaluations; 0 = only at the end.")
    checkpoint_every: int = Field(
        ge=0, description="Steps between checkpoints; 0 = only at the end."
    )
    seed: int = Field(ge=0, description="Seed of every RNG used during training (+ rank).")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps and epochs")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) > max_steps ({self.max_steps})")
        return self

    def for_data(self, micro_batches_per_epoch: int) -> "TrainConfig":
        """This config with `max_steps` set: as given, or `epochs` passes over data that
        yields `micro_batches_per_epoch` global micro-batches per pass (rounded up, so the
        last pass is never cut short by rounding)."""
        if self.max_steps is not None:
            return self
        steps = max(1, math.ceil(self.epochs * micro_batches_per_epoch / self.grad_accum_steps))
        if self.warmup_steps > steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) > the {steps} steps that "
                             f"{self.epochs} epoch(s) of {micro_batches_per_epoch} micro-batches "
                             "make; lower warmup_steps")
        return self.model_copy(update={"max_steps": steps})


class BatchSource(Protocol):
    """Yields this rank's micro-batches (dicts of int64 tensors) and can save its position.

    `steps_per_epoch` (global micro-batches per pass over the data) is read only for a config
    that gives `epochs` instead of `max_steps`.
    """

    def __next__(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------------- distribution


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) of this process; joins the torchrun process group if any.

    A plain `python` launch is rank 0 of 1. Under torchrun (WORLD_SIZE > 1) each process takes
    GPU LOCAL_RANK with NCCL, or the CPU with gloo. Calling it again is harmless.
    """
    launched_by_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not dist.is_initialized() and not launched_by_torchrun:
        return 0, 1, default_device()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_distributed() -> None:
    """Leave the process group (no-op outside torchrun)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- optimizer


def param_groups(model: nn.Module, weight_decay: float,
                 lr_scale: Callable[[str], float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on norms, biases (1-D) and embeddings.

    Decaying a norm gain or a bias pulls it towards 0, which is not a sensible prior; embedding
    rows of rare tokens would shrink just for being rare. Frozen parameters are left out.
    `lr_scale` (parameter name -> factor on the peak learning rate) splits the groups further,
    e.g. a freshly initialised projector learning faster than a pretrained LLM; each group
    carries its factor as `lr_scale`.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip_decay = param.ndim < 2 or id(param) in embedding_weights
        scale = 1.0 if lr_scale is None else float(lr_scale(name))
        groups.setdefault((not skip_decay, scale), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "lr_scale": scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0],
                                                                                 kv[0][1]))]


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device,
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: fused kernel on CUDA, foreach on CPU."""
    groups = param_groups(model, config.weight_decay, lr_scale)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, **kernel)


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `TrainConfig.dtype` setting, or None for plain float32."""
    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of one accelerator of this kind, when known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for fragment, flops in PEAK_BF16_FLOPS if fragment in name), None)


def count_loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Positions that carry loss: the model predicts labels[:, 1:] from input_ids[:, :-1]."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def count_input_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model reads, for throughput: padding under an `attention_mask` excluded."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()


# ---------------------------------------------------------------------------- trainer


@dataclass
class StepStats:
    """What one optimizer step reports (global over ranks)."""

    loss: float
    grad_norm: float
    lr: float
    tokens: int
    aux_loss: float | None
    model_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LogWindow:
    """Running sums between two metric logs."""

    steps: int = 0
    loss: float = 0.0
    aux_loss: float = 0.0
    tokens: int = 0
    model_metrics: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add(self, stats: StepStats) -> None:
        self.steps += 1
        self.loss += stats.loss
        self.aux_loss += stats.aux_loss or 0.0
        self.tokens += stats.tokens
        for name, value in stats.model_metrics.items():
            self.model_metrics[name] = self.model_metrics.get(name, 0.0) + value


class Trainer:
    """Trains `model` on `train_batches` for `config.max_steps` optimizer steps.

    `model(**batch, num_items_in_batch=N)` must return an object with `.loss` (sum of token
    cross-entropy, or of whatever `count_items` counts, / N) and optionally `.aux_loss` and
    `.metrics`. An aux loss (MoE balance) is only logged (its mean over forward passes): the
    model adds it into `.loss` weighted by the batch's share of the N tokens, so that it too
    accumulates to a mean rather than a sum. `.metrics` (name -> float or 0-d tensor, the same
    names on every forward) are logged as their mean over the forward passes of the log window
    on all ranks; the trainer's own metrics (loss, lr, ...) win a name clash. Construction
    resumes from `checkpoint_dir/checkpoint.pt` when it exists and was written with the same
    config and world size. Only rank 0 logs, evaluates and writes checkpoints.

    Args:
        log_metrics: called on rank 0 as `log_metrics(metrics, step)`.
        evaluate: called on rank 0 with the unwrapped model (eval mode, no grad, autocast) every
            `eval_every` steps and at the end; its metrics are logged and returned by `fit`.
        flops_per_token: training FLOPs per token (about 6 x parameters + attention), for MFU.
        trainable: keeps only parameters whose name it accepts trainable (e.g. LoRA adapters);
            without it, parameters' own `requires_grad` flags decide.
        count_items: what N counts in a micro-batch (default: its loss tokens); summed over
            the accumulation micro-batches and ranks of the step like the token count.
        device: overrides the device `init_distributed` picks (e.g. CPU on a GPU machine).
        forward_kwargs: extra keyword arguments of every training forward, e.g.
            `{"loss_only": True}` for a MiniMind model (no logits where no loss is read).
        lr_scale: parameter name -> factor on `config.lr` (default 1 for all); the schedule
            scales every group alike.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_batches: BatchSource,
        checkpoint_dir: Path,
        log_metrics: Callable[[dict[str, float], int], None] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        flops_per_token: float | None = None,
        trainable: Callable[[str], bool] | None = None,
        device: torch.device | str | None = None,
        count_items: Callable[[dict[str, torch.Tensor]], int] | None = None,
        forward_kwargs: dict[str, Any] | None = None,
        lr_scale: Callable[[str], float] | None = None,
    ) -> None:
        if config.max_steps is None:  # `epochs`: the batch source says how long one pass is
            config = config.for_data(train_batches.steps_per_epoch)
        self.config = config
        self.forward_kwargs = dict(forward_kwargs or {})
        self.train_batches = train_batches
        self.count_items = count_items or count_loss_tokens
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        self.log_metrics = log_metrics
        self.evaluate = evaluate
        self.flops_per_token = flops_per_token
        self.rank, self.world_size, default = init_distributed()
        self.device = torch.device(device) if device is not None else default
        self.autocast_dtype = autocast_dtype(config.dtype, self.device)
        self.peak_flops = peak_flops(self.device)
        seed_everything(config.seed + self.rank)

        if trainable is not None:
            for name, param in model.named_parameters():
                param.requires_grad_(trainable(name))
        self.raw_model = model.to(self.device)
        self.trainable_params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.raw_model, config, self.device, lr_scale)
        schedule = partial(
            lr_multiplier,
            warmup_steps=config.warmup_steps,
            max_steps=config.max_steps,
            min_lr_ratio=config.min_lr_ratio,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        self.tokens_seen = 0
        self.metrics: dict[str, float] = {}
        self._resume()
        self.model = self._wrap(self.raw_model)

    # --------------------------------------------------------------------- public

    def fit(self) -> dict[str, float]:
        """Train to `max_steps` (from wherever the checkpoint left off); return final metrics.

        The final metrics are the last logged training metrics plus the final evaluation's.
        """
        config = self.config
        self.model.train()
        window = LogWindow()
        with tqdm(
            total=config.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=self.rank != 0,
        ) as progress:
            while self.step < config.max_steps:
                stats = self._train_step()
                self.step += 1
                self.tokens_seen += stats.tokens
                window.add(stats)
                progress.update()
                is_last = self.step == config.max_steps
                if self.step % config.log_every == 0 or is_last:
                    self._log(window, stats)
                    progress.set_postfix(
                        loss=f"{self.metrics['loss']:.4f}",
                        tok_s=f"{self.metrics['tokens_per_s']:.0f}",
                    )
                    window = LogWindow()
                if self._due(config.eval_every) or is_last:
                    self._evaluate()
                if self._due(config.checkpoint_every) or is_last:
                    self.save_checkpoint()
        if dist.is_initialized():
            dist.barrier()  # no rank returns before the final checkpoint exists
        return dict(self.metrics)

    def save_checkpoint(self) -> None:
        """Write the full training state (every rank's RNG and data position included)."""
        rank_state = {"rng": capture_rng_state(), "batches": self.train_batches.state_dict()}
        rank_states = self._gather_to_rank0(rank_state)
        if self.rank != 0:
            return
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "config": self.config.model_dump(mode="json"),
            "world_size": self.world_size,
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rank_states": rank_states,
            "metrics": self.metrics,
        }
        save_checkpoint(state, self.checkpoint_path)

    # --------------------------------------------------------------------- one step

    def _train_step(self) -> StepStats:
        """One optimizer step over `grad_accum_steps` micro-batches on every rank."""
        micro_batches = [next(self.train_batches) for _ in range(self.config.grad_accum_steps)]
        counts = torch.tensor(
            [
                sum(self.count_items(batch) for batch in micro_batches),
                sum(count_input_tokens(batch) for batch in micro_batches),
            ],
            device=self.device,
        )
        self._all_reduce_sum(counts)
        loss_items, input_tokens = counts.tolist()
        loss, aux_loss, model_metrics = self._accumulate_gradients(
            micro_batches, max(loss_items, 1)
        )

        max_norm = self.config.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_params, max_norm).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise RuntimeError(
                f"non-finite training at step {self.step + 1}: loss {loss}, grad norm "
                f"{grad_norm}; stopped before the optimizer step, the last good checkpoint "
                f"is kept at {self.checkpoint_path}"
            )
        # The schedule's rate this step, before any group's `lr_scale`.
        lr = self.config.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(loss, grad_norm, lr, input_tokens, aux_loss, model_metrics)

    def _accumulate_gradients(
        self, micro_batches: list[dict[str, torch.Tensor]], num_items_in_batch: int
    ) -> tuple[float, float | None, dict[str, float]]:
        """Forward + backward every micro-batch; return the step's global loss, aux loss (or
        None) and model metrics (means over the forward passes of all ranks).

        `num_items_in_batch` is the item count of the whole step on all ranks (at least 1, so
        an all-masked step gives zero loss rather than 0/0).
        """
        num_items = torch.tensor(num_items_in_batch, device=self.device)
        forward_passes = len(micro_batches) * self.world_size
        totals = torch.zeros(2, device=self.device)  # (loss, aux_loss) of this rank
        has_aux_loss = False
        metric_sums: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(micro_batches):
            batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
            with self._gradient_sync(index == len(micro_batches) - 1):
                with self._autocast():
                    output = self.model(**batch, num_items_in_batch=num_items,
                                        **self.forward_kwargs)
                (output.loss * self.world_size).backward()  # undo DDP's average over ranks
            totals[0] += output.loss.detach().float()
            aux_loss = getattr(output, "aux_loss", None)
            if aux_loss is not None:
                has_aux_loss = True
                totals[1] += aux_loss.detach().float() / forward_passes
            for name, value in (getattr(output, "metrics", None) or {}).items():
                value = torch.as_tensor(value, device=self.device).detach().float()
                metric_sums[name] = metric_sums.get(name, 0.0) + value / forward_passes
        names = sorted(metric_sums)
        totals = torch.cat([totals, *(metric_sums[name].reshape(1) for name in names)])
        self._all_reduce_sum(totals)  # one collective for the loss, aux loss and metrics
        loss, aux_loss_mean, *metric_means = totals.tolist()
        return (
            loss,
            aux_loss_mean if has_aux_loss else None,
            dict(zip(names, metric_means, strict=True)),
        )

    def _gradient_sync(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients only on the last micro-batch of a step."""
        if isinstance(self.model, DistributedDataParallel) and not is_last_micro_batch:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # --------------------------------------------------------------------- logging, eval

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _log(self, window: LogWindow, last: StepStats) -> None:
        """Window-averaged loss and throughput, plus the last step's lr and grad norm."""
        tokens_per_s = window.tokens / max(time.perf_counter() - window.started, 1e-9)
        metrics = {
            **{name: total / window.steps for name, total in window.model_metrics.items()},
            "loss": window.loss / window.steps,
            "lr": last.lr,
            "grad_norm": last.grad_norm,
            "tokens_per_s": tokens_per_s,
        }
        if last.aux_loss is not None:
            metrics["aux_loss"] = window.aux_loss / window.steps
        if self.flops_per_token and self.peak_flops:
            achieved = self.flops_per_token * tokens_per_s
            metrics["mfu"] = achieved / (self.peak_flops * self.world_size)
        self._record(metrics)

    def _evaluate(self) -> None:
        """Run the evaluation callback on rank 0 without disturbing the training RNG streams."""
        if self.evaluate is None or self.rank != 0:
            return
        self.raw_model.eval()
        with torch.no_grad(), preserved_rng(), self._autocast():
            metrics = self.evaluate(self.raw_model)
        self.raw_model.train()
        self._record(metrics)

    def _record(self, metrics: dict[str, float]) -> None:
        metrics = {name: float(value) for name, value in metrics.items()}  # no numpy scalars
        self.metrics.update(metrics)
        if self.log_metrics is not None and self.rank == 0:
            self.log_metrics(metrics, self.step)

    # --------------------------------------------------------------------- resume, DDP

    def _resume(self) -> None:
        """Load the checkpoint in checkpoint_dir, unless it belongs to another config."""
        state = load_checkpoint(self.checkpoint_path)
        if state is None:
            return
        if state["config"] != self.config.model_dump(mode="json"):
            warnings.warn(
                f"ignoring checkpoint {self.checkpoint_path}: written with a different "
                f"training config; starting from step 0",
                stacklevel=3,
            )
            return
        if state["world_size"] != self.world_size:
            warnings.warn(
                f"ignoring checkpoint {self.checkpoint_path}: written by "
                f"{state['world_size']} processes, this run has {self.world_size}; "
                f"starting from step 0",
                stacklevel=3,
            )
            return
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rank_state = state["rank_states"][self.rank]
        restore_rng_state(rank_state["rng"])
        self.train_batches.load_state_dict(rank_state["batches"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.metrics = dict(state["metrics"])
        logger.info("resumed from step %d (%s)", self.step, self.checkpoint_path)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.config.compile:
            model = torch.compile(model)
        if self.world_size > 1:
            model = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config.ddp_find_unused_parameters,
            )
        return model

    def _all_reduce_sum(self, tensor: torch.Tensor) -> None:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def _gather_to_rank0(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered or []

