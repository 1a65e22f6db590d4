"""Trainer: learning, bit-exact resume after SIGKILL, stale/NaN safety, schedule, accumulation, DDP.

The toy model and batch source live in tests/ddp_worker.py, which is also the script the
subprocess tests launch, so in-process and launched runs build identical trainers.
"""

import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from minimind.training import TrainConfig, Trainer, lr_multiplier, param_groups, seed_everything
from minimind.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.ddp_worker import VOCAB_SIZE, TinyLM, ToyBatches, ToyOutput, toy_config, toy_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "ddp_worker.py"
# Launched scripts see only the CPU (gloo), import this checkout's `minimind` and, like the
# in-process runs they are compared with, use one thread.
WORKER_ENV = os.environ | {
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONPATH": str(REPO),
    "OMP_NUM_THREADS": "1",
}


def recorder() -> tuple[dict[int, dict[str, float]], Callable[[dict[str, float], int], None]]:
    """A log_metrics callback and the {step: metrics} dict it fills."""
    logged: dict[int, dict[str, float]] = {}

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        logged.setdefault(step, {}).update(metrics)

    return logged, log_metrics


def assert_state_dicts_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(actual[key], value), key
        elif isinstance(value, dict):
            assert_state_dicts_equal(actual[key], value)
        else:
            assert actual[key] == value, key


def run_worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=WORKER_ENV, capture_output=True, text=True
    )


def test_loss_falls_on_learnable_task(tmp_path: Path) -> None:
    logged, log_metrics = recorder()
    config = toy_config(max_steps=60, log_every=5, checkpoint_every=0)
    final = toy_trainer(config, tmp_path, log_metrics=log_metrics).fit()

    first, last = logged[5]["loss"], logged[60]["loss"]
    assert first > 3.0  # about ln(32) = 3.47 at the start: chance level
    assert last < 0.25 * first
    assert final["loss"] == last
    assert set(logged[60]) == {"loss", "lr", "grad_norm", "tokens_per_s"}  # no MFU on CPU
    assert logged[60]["tokens_per_s"] > 0


def test_killed_run_resumes_bit_exact(tmp_path: Path) -> None:
    config = toy_config(max_steps=8, checkpoint_every=4)
    straight = toy_trainer(config, tmp_path / "straight", dropout=0.1)
    straight.fit()

    # A separate process trains with the same settings and is SIGKILLed at step 6, after the
    # step-4 checkpoint and before the next one: steps 5 and 6 are lost.
    killed = run_worker(
        str(WORKER), "--checkpoint-dir", str(tmp_path / "killed"), "--dropout", "0.1",
        "--kill-at-step", "6",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = load_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)
    assert checkpoint["step"] == 4
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [CHECKPOINT_NAME]

    # A fresh trainer with a different initialisation picks up at step 4 and finishes.
    resumed = toy_trainer(config, tmp_path / "killed", model_seed=123, dropout=0.1)
    assert resumed.step == 4
    resumed.fit()
    assert resumed.step == 8
    assert_state_dicts_equal(resumed.raw_model.state_dict(), straight.raw_model.state_dict())
    assert_state_dicts_equal(resumed.optimizer.state_dict(), straight.optimizer.state_dict())
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()


def test_checkpoint_of_another_config_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toy_trainer(toy_config(max_steps=2), tmp_path).fit()

    with caplog.at_level(logging.INFO, logger="minimind.training.trainer"):
        same = toy_trainer(toy_config(max_steps=2), tmp_path)
    assert same.step == 2
    assert "resumed from step 2" in caplog.text

    with pytest.warns(UserWarning, match="different training config"):
        changed = toy_trainer(toy_config(max_steps=2, lr=5e-3), tmp_path)
    assert changed.step == 0
    seed_everything(0)  # toy_trainer's default model_seed: the init the stale checkpoint left
    initial = TinyLM().state_dict()
    assert_state_dicts_equal(changed.raw_model.state_dict(), initial)


class NaNAfter(TinyLM):
    """TinyLM whose loss turns NaN from its `healthy_calls + 1`-th training forward on."""

    def __init__(self, healthy_calls: int) -> None:
        super().__init__()
        self.calls_left = healthy_calls

    def forward(self, *args, **kwargs) -> ToyOutput:
        output = super().forward(*args, **kwargs)
        self.calls_left -= 1
        return output if self.calls_left >= 0 else ToyOutput(output.loss * math.nan)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    config = toy_config(max_steps=8, checkpoint_every=2, grad_accum_steps=2)
    model = NaNAfter(healthy_calls=2 * 5)  # steps 1..5 fine, step 6 NaN
    trainer = Trainer(model, config, ToyBatches(4), tmp_path, device="cpu")
    with pytest.raises(RuntimeError, match=r"non-finite training at step 6: loss nan"):
        trainer.fit()

    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert checkpoint["step"] == 4
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    assert toy_trainer(config, tmp_path).step == 4  # and it resumes


def test_warmup_cosine_schedule() -> None:
    def multiplier(step: int) -> float:
        return lr_multiplier(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)

    assert multiplier(0) == pytest.approx(0.1)  # 1/10: the first step already learns
    assert multiplier(4) == pytest.approx(0.5)
    assert multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0)  # peak
    assert multiplier(60) == pytest.approx(0.55)  # half-way down the cosine: (1 + 0.1) / 2
    assert multiplier(110) == pytest.approx(0.1)
    assert multiplier(500) == pytest.approx(0.1)
    no_warmup = lr_multiplier(0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0)
    assert no_warmup == pytest.approx(1.0)


def test_trainer_applies_schedule(tmp_path: Path) -> None:
    logged, log_metrics = recorder()
    config = toy_config(max_steps=8, warmup_steps=2, lr=1e-2, min_lr_ratio=0.1)
    toy_trainer(config, tmp_path, log_metrics=log_metrics).fit()
    expected = [
        1e-2 * lr_multiplier(s, warmup_steps=2, max_steps=8, min_lr_ratio=0.1) for s in range(8)
    ]
    assert [logged[s + 1]["lr"] for s in range(8)] == pytest.approx(expected)
    assert expected[:3] == pytest.approx([5e-3, 1e-2, 1e-2])


def test_weight_decay_groups_and_trainable_filter(tmp_path: Path) -> None:
    model = TinyLM()
    names = {id(param): name for name, param in model.named_parameters()}
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in decay["params"]} == {"mix.weight", "head.weight"}
    assert {names[id(p)] for p in no_decay["params"]} == {
        "embed.weight", "mix.bias", "norm.weight", "norm.bias",
    }

    tied = TinyLM()
    tied.head.weight = tied.embed.weight  # tied embeddings: one tensor, never decayed
    groups = param_groups(tied, weight_decay=0.1)
    assert sum(len(group["params"]) for group in groups) == 5
    assert all(p is not tied.embed.weight for p in groups[0]["params"])

    trainer = toy_trainer(toy_config(max_steps=2), tmp_path, trainable=lambda n: "head" in n)
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    trainer.fit()
    after = trainer.raw_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight"}
    assert [len(group["params"]) for group in trainer.optimizer.param_groups] == [1]


def test_lr_scale_gives_groups_their_own_rate_on_one_schedule(tmp_path: Path) -> None:
    model = TinyLM()
    names = {id(param): name for name, param in model.named_parameters()}
    groups = param_groups(model, weight_decay=0.1, lr_scale=lambda n: 10.0 if "head" in n else 1.0)
    by_scale = {(g["weight_decay"], g["lr_scale"]): {names[id(p)] for p in g["params"]}
                for g in groups}
    assert by_scale == {(0.1, 1.0): {"mix.weight"}, (0.1, 10.0): {"head.weight"},
                        (0.0, 1.0): {"embed.weight", "mix.bias", "norm.weight", "norm.bias"}}

    logged, log_metrics = recorder()
    config = toy_config(max_steps=6, warmup_steps=2, lr=1e-3, min_lr_ratio=0.1,
                        checkpoint_every=0)
    trainer = toy_trainer(config, tmp_path, log_metrics=log_metrics,
                          lr_scale=lambda n: 10.0 if "head" in n else 1.0)
    trainer.fit()
    final = 1e-3 * lr_multiplier(6, warmup_steps=2, max_steps=6, min_lr_ratio=0.1)
    for group in trainer.optimizer.param_groups:  # every group followed the schedule
        assert group["lr"] == pytest.approx(final * group["lr_scale"])
    assert {g["lr_scale"] for g in trainer.optimizer.param_groups} == {1.0, 10.0}
    assert logged[6]["lr"] == pytest.approx(  # the logged rate is the schedule's, unscaled
        1e-3 * lr_multiplier(5, warmup_steps=2, max_steps=6, min_lr_ratio=0.1))

    # A factor of 0 freezes a parameter in effect: the optimizer never moves it.
    still = toy_trainer(config, tmp_path / "still", lr_scale=lambda n: 0.0 if "head" in n else 1.0)
    head = still.raw_model.head.weight.detach().clone()
    still.fit()
    assert torch.equal(still.raw_model.head.weight, head)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        toy_config(max_steps=4, warmup_steps=5)
    with pytest.raises(ValueError, match="extra"):
        toy_config(learning_rate=1e-3)
    assert TrainConfig.model_fields["grad_clip"].description
    with pytest.raises(ValueError, match="exactly one of max_steps and epochs"):
        toy_config(max_steps=None)
    with pytest.raises(ValueError, match="exactly one of max_steps and epochs"):
        toy_config(epochs=1)


def test_epochs_set_the_steps_from_the_data_size(tmp_path: Path) -> None:
    from minimind.data.batches import BatchStream

    config = toy_config(max_steps=None, epochs=2.5, grad_accum_steps=2, warmup_steps=1)
    # 50 rows in micro-batches of 4: 12 per pass; 2.5 passes of 12, 2 per step: 15 steps.
    assert config.for_data(12).max_steps == 15
    assert toy_config().for_data(12).max_steps == 8  # max_steps given: unchanged
    with pytest.raises(ValueError, match="warmup_steps .* lower warmup_steps"):
        toy_config(max_steps=None, epochs=1, warmup_steps=5).for_data(4)
    rows = [{"input_ids": ids.numpy(), "labels": labels.numpy()}
            for ids, labels in map(ToyBatches(1).row, range(50))]
    batches = BatchStream(rows, batch_size=config.micro_batch_size, seed=config.seed)
    trainer = Trainer(TinyLM(), config, batches, tmp_path, device="cpu")
    assert trainer.config.max_steps == 15 and trainer.config.epochs == 2.5
    trainer.fit()
    assert trainer.step == 15 and batches.epoch == 2  # stopped inside the third pass


def test_grad_accumulation_matches_larger_micro_batch(tmp_path: Path) -> None:
    batches = ToyBatches(4)
    tokens_per_micro_batch = {int((next(batches)["labels"][:, 1:] != -100).sum()) for _ in range(6)}
    assert len(tokens_per_micro_batch) > 1  # uneven loss tokens: per-micro means would differ

    options = {"aux_weight": 0.05, "dropout": 0.0}
    logged_accum, log_accum = recorder()
    accumulated = toy_trainer(
        toy_config(max_steps=3, micro_batch_size=4, grad_accum_steps=2),
        tmp_path / "accum", log_metrics=log_accum, **options,
    )
    accumulated.fit()
    logged_big, log_big = recorder()
    big = toy_trainer(
        toy_config(max_steps=3, micro_batch_size=8), tmp_path / "big", log_metrics=log_big,
        **options,
    )
    big.fit()

    for step in (1, 2, 3):
        for key in ("loss", "grad_norm"):
            assert logged_accum[step][key] == pytest.approx(logged_big[step][key], rel=1e-6)
    for name, value in big.raw_model.state_dict().items():
        torch.testing.assert_close(accumulated.raw_model.state_dict()[name], value,
                                   rtol=1e-6, atol=1e-6)


def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    # 2 ranks x 2 accumulation steps x 2 rows == 1 process x 1 step x 8 rows, per step.
    result_path = tmp_path / "ddp.pt"
    launched = run_worker(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
        "--checkpoint-dir", str(tmp_path / "ddp"), "--out", str(result_path),
        "--micro-batch-size", "2", "--grad-accum-steps", "2", "--aux-weight", "0.05",
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    ddp = torch.load(result_path, weights_only=True)

    logged, log_metrics = recorder()
    single = toy_trainer(
        toy_config(micro_batch_size=8), tmp_path / "single", aux_weight=0.05,
        log_metrics=log_metrics,
    )
    single.fit()

    assert sorted(ddp["losses"]) == list(range(1, 9))
    for step, loss in ddp["losses"].items():
        assert loss == pytest.approx(logged[step]["loss"], abs=1e-5)
    for name, value in single.raw_model.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-5, atol=1e-5)


def test_evaluation_is_logged_and_leaves_training_untouched(tmp_path: Path) -> None:
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(100)  # an evaluation that samples must not shift the training RNG
        return {"val_score": float(model.head.weight.abs().sum())}

    logged, log_metrics = recorder()
    config = toy_config(max_steps=6, eval_every=4)
    evaluated = toy_trainer(
        config, tmp_path / "eval", dropout=0.1, evaluate=evaluate, log_metrics=log_metrics
    )
    final = evaluated.fit()
    plain = toy_trainer(config, tmp_path / "plain", dropout=0.1)
    plain.fit()

    assert [step for step in logged if "val_score" in logged[step]] == [4, 6]
    assert final["val_score"] == logged[6]["val_score"] and "loss" in final
    assert evaluated.raw_model.training
    assert_state_dicts_equal(evaluated.raw_model.state_dict(), plain.raw_model.state_dict())


class SimulatedCrash(Exception):
    pass


def test_real_moe_model_and_batch_stream_learn_and_resume_bit_exact(tmp_path: Path) -> None:
    from minimind.data.batches import BatchStream
    from minimind.model import MiniMindForCausalLM, preset_config

    toy_rows = ToyBatches(1)
    rows = [
        {"input_ids": ids.numpy(), "labels": labels.numpy()}
        for ids, labels in map(toy_rows.row, range(64))
    ]

    def real_trainer(directory: Path, log_metrics=None) -> Trainer:
        seed_everything(0)
        preset = preset_config("tiny-moe", vocab_size=VOCAB_SIZE, num_hidden_layers=2)
        config = toy_config(max_steps=8, lr=3e-3, checkpoint_every=4)
        model = MiniMindForCausalLM(preset)
        batches = BatchStream(rows, batch_size=config.micro_batch_size, seed=config.seed)
        return Trainer(model, config, batches, directory, device="cpu", log_metrics=log_metrics)

    logged, log_metrics = recorder()
    straight = real_trainer(tmp_path / "straight", log_metrics)
    straight.fit()
    assert logged[8]["loss"] < logged[1]["loss"] - 0.5
    assert logged[8]["aux_loss"] > 0  # the MoE balance loss is reported

    def crash_at_step_6(metrics: dict[str, float], step: int) -> None:
        if step == 6:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        real_trainer(tmp_path / "crashed", crash_at_step_6).fit()
    resumed = real_trainer(tmp_path / "crashed")
    assert resumed.step == 4
    resumed.fit()
    assert_state_dicts_equal(resumed.raw_model.state_dict(), straight.raw_model.state_dict())
