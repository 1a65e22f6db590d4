"""DPO: answer-only masks, pair batches, the loss by hand, a frozen reference, learning through
the shared Trainer (pair counting, accumulation, logged reward metrics)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minimind.data.dpo_tokens import (
    DPODataset,
    DPOTokensConfig,
    PairBatchStream,
    collate_pairs,
    eval_pair_batches,
    write_dpo_tokens,
)
from minimind.data.pretrain_tokens import IGNORE_INDEX
from minimind.dpo import (
    DPOConfig,
    DPOPolicy,
    ReferencedPairs,
    count_pairs,
    dpo_loss,
    preference_accuracy,
    reference_logps,
    sequence_logps,
)
from minimind.model import MiniMindForCausalLM, preset_config
from minimind.tokenizer import train_tokenizer
from minimind.training import TrainConfig, Trainer, seed_everything
from minimind.training.trainer import count_input_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FILLER = ["the", "a", "river", "town", "walk", "old", "people", "dog", "city", "name", "day",
          "morning", "evening", "and", "with", "past", "their", "where", "road", "hill", "green"]
# The task: a "warm" prompt prefers an answer ending in "sunny", a "cold" one in "snowy".
GOOD_WORD = {"warm": "sunny", "cold": "snowy"}
BETA = 0.5


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(count))


def synthetic_pair(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """A learnable pair: the right weather word depends on the prompt; some prompts are
    multi-turn, so an earlier assistant turn sits in the (untrained) context."""
    topic = rng.choice(sorted(GOOD_WORD))
    bad_word = GOOD_WORD["cold" if topic == "warm" else "warm"]
    prompt = [{"role": "user", "content": f"describe a {topic} day {words(rng, 3)}"}]
    if rng.random() < 0.3:
        prompt = [{"role": "user", "content": "hello"},
                  {"role": "assistant", "content": words(rng, 2)}, *prompt]
    answer = words(rng, rng.randint(1, 4))
    return ([*prompt, {"role": "assistant", "content": f"{answer} {GOOD_WORD[topic]}"}],
            [*prompt, {"role": "assistant", "content": f"{answer} {bad_word}"}])


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [f"describe a warm cold day sunny snowy hello {words(rng, 12)}" for _ in range(200)]
    return train_tokenizer(texts, vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def splits(tokenizer, tmp_path_factory) -> tuple[DPODataset, DPODataset]:
    root = tmp_path_factory.mktemp("dpo")
    rng = random.Random(1)
    for split, count in (("train", 192), ("val", 64)):
        write_dpo_tokens((synthetic_pair(rng) for _ in range(count)), tokenizer, root / split,
                         max_len=128)
    return DPODataset(root / "train"), DPODataset(root / "val")


def tiny_lm(vocab_size: int, seed: int = 0) -> MiniMindForCausalLM:
    seed_everything(seed)
    return MiniMindForCausalLM(preset_config(
        "tiny", vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, intermediate_size=128,
    ))


def recorder() -> tuple[dict[int, dict[str, float]], Callable[[dict[str, float], int], None]]:
    logged: dict[int, dict[str, float]] = {}

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        logged.setdefault(step, {}).update(metrics)

    return logged, log_metrics


def train_config(**overrides) -> TrainConfig:
    settings = {"max_steps": 4, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 2,
                "dtype": "float32", "log_every": 1, "eval_every": 0, "checkpoint_every": 0,
                "seed": 0}
    return TrainConfig(**(settings | overrides))


# --- tokens -------------------------------------------------------------------------------------


def test_masks_cover_exactly_the_final_answer_after_an_identical_prompt(tokenizer, tmp_path):
    rng = random.Random(2)
    pairs = [synthetic_pair(rng) for _ in range(20)]
    assert any(len(chosen) == 4 for chosen, _ in pairs)  # multi-turn prompts are covered
    stats = write_dpo_tokens(iter(pairs), tokenizer, tmp_path, max_len=128)
    dataset = DPODataset(tmp_path)

    assert len(dataset) == stats["pairs"] == 20 and stats["dropped_too_long"] == 0
    answer_tokens = 0
    for (chosen, rejected), i in zip(pairs, range(len(dataset)), strict=True):
        row = dataset[i]
        prompt_ids = tokenizer.apply_chat_template(chosen[:-1], add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
        for side, messages in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            answer = labels != IGNORE_INDEX
            start = int(np.argmax(answer))
            assert ids[:start].tolist() == list(prompt_ids)  # the prompt, identical on both sides
            assert answer[start:].all()  # the answer runs to the end of the sequence
            assert np.array_equal(labels[answer], ids[answer])
            assert tokenizer.decode(ids[start:]) == messages[-1]["content"] + "<|im_end|>"
            answer_tokens += int(answer.sum())
    assert stats["answer_tokens"] == answer_tokens
    assert stats["tokens"] == int(dataset.lengths.sum())


def test_truncation_drops_pairs_without_answer_and_malformed_pairs_raise(tokenizer, tmp_path):
    prompt = [{"role": "user", "content": "describe a warm day " + "the river " * 30}]
    short = [{"role": "user", "content": "hello"}]
    long_answer = "the old town " * 20
    pairs = [
        ([*prompt, {"role": "assistant", "content": "sunny"}],
         [*prompt, {"role": "assistant", "content": "snowy"}]),  # prompt fills max_len: dropped
        ([*short, {"role": "assistant", "content": long_answer}],
         [*short, {"role": "assistant", "content": "snowy"}]),  # chosen cut, still answered
    ]
    stats = write_dpo_tokens(pairs, tokenizer, tmp_path, max_len=32)
    assert stats["pairs"] == 1 and stats["dropped_too_long"] == 1 and stats["truncated"] == 1
    row = DPODataset(tmp_path)[0]
    assert len(row["chosen_input_ids"]) == 32 and row["chosen_labels"][-1] != IGNORE_INDEX
    assert tokenizer.decode(row["rejected_input_ids"]).endswith("snowy<|im_end|>")

    with pytest.raises(ValueError, match="share their prompt"):
        write_dpo_tokens([(pairs[0][0], pairs[1][1])], tokenizer, tmp_path / "bad")
    with pytest.raises(ValueError, match="end with an assistant"):
        write_dpo_tokens([(short, short)], tokenizer, tmp_path / "bad")
    with pytest.raises(ValueError, match="not 'dpo-tokens'"):
        (tmp_path / "index.json").write_text('{"format": "sft-tokens"}')
        DPODataset(tmp_path)
    assert DPOTokensConfig().max_len == 512
    with pytest.raises(ValueError, match="extra"):
        DPOTokensConfig(seq_len=3)


def test_collate_pairs_pads_right_chosen_first():
    rows = [
        {"chosen_input_ids": np.array([5, 6, 7]), "chosen_labels": np.array([-100, 6, 7]),
         "rejected_input_ids": np.array([5, 8]), "rejected_labels": np.array([-100, 8]),
         "ref_chosen_logps": np.float32(-1.5), "ref_rejected_logps": np.float32(-2.5)},
        {"chosen_input_ids": np.array([9]), "chosen_labels": np.array([9]),
         "rejected_input_ids": np.array([9, 1, 2, 3]), "rejected_labels": np.array([-100, 1, 2, 3]),
         "ref_chosen_logps": np.float32(-0.5), "ref_rejected_logps": np.float32(-4.0)},
    ]
    batch = collate_pairs(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [9, 0, 0, 0], [5, 8, 0, 0], [9, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [9, -100, -100, -100],
                                        [-100, 8, -100, -100], [-100, 1, 2, 3]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 1, 2, 4]
    assert batch["ref_chosen_logps"].dtype == torch.float32
    assert batch["ref_rejected_logps"].tolist() == [-2.5, -4.0]
    assert count_pairs(batch) == 2
    assert count_input_tokens(batch) == 10  # padding is not throughput
    assert count_input_tokens({"input_ids": batch["input_ids"]}) == 16


def test_pair_batches_split_ranks_and_resume(splits):
    train, _ = splits
    # Reference log-probs that are the pair indices show which pairs a batch holds.
    numbered = ReferencedPairs(train, np.repeat(np.arange(len(train))[:, None], 2, axis=1))

    def picked(batch: dict[str, torch.Tensor]) -> list[int]:
        return batch["ref_chosen_logps"].int().tolist()

    whole = PairBatchStream(numbered, 8, seed=3)
    ranks = [PairBatchStream(numbered, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):  # past the end of the first epoch (24 batches)
        assert picked(next(whole)) == picked(next(ranks[0])) + picked(next(ranks[1]))
    state = whole.state_dict()
    following = [picked(next(whole)) for _ in range(3)]
    resumed = PairBatchStream(numbered, 8, seed=3)
    resumed.load_state_dict(state)
    assert [picked(next(resumed)) for _ in range(3)] == following
    assert [picked(batch)[0] for batch in eval_pair_batches(numbered, 80)] == [0, 80, 160]
    assert [len(batch["input_ids"]) for batch in eval_pair_batches(train, 80)] == [160, 160, 64]


# --- loss ---------------------------------------------------------------------------------------


def test_sequence_logps_hand_checked():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]]])  # (1, 3, vocab 2)
    labels = torch.tensor([[-100, 0, 1]])  # predicts 0 from position 0, 1 from position 1
    expected = math.log(0.5) + math.log(1 / 4)  # p(0)=1/2 at t=0; p(1)=1/(3+1) at t=1
    assert sequence_logps(logits, labels).item() == pytest.approx(expected)
    assert sequence_logps(logits, torch.full((1, 3), -100)).item() == 0.0


def test_dpo_loss_hand_checked():
    same = torch.tensor([-3.0, -7.0])
    losses, chosen, rejected = dpo_loss(same, same - 1, same, same - 1, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)
    assert chosen.tolist() == [0.0, 0.0] and rejected.tolist() == [0.0, 0.0]

    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    losses, chosen, rejected = dpo_loss(policy_chosen, torch.tensor([-3.0]),
                                        torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert chosen.item() == 0.5 and rejected.item() == -0.5  # beta * (policy - reference)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.0)))  # -log sigmoid(1)
    losses.sum().backward()  # d/dp_chosen = -beta * sigmoid(-margin)
    assert policy_chosen.grad.item() == pytest.approx(-0.5 / (1 + math.e))
    assert DPOConfig().beta == 0.1


def test_policy_as_its_own_reference_scores_chance(tokenizer, splits):
    _, val = splits
    policy = tiny_lm(len(tokenizer))
    ref = reference_logps(policy, val, batch_size=16)
    assert ref.shape == (len(val), 2) and (ref < 0).all()
    metrics = preference_accuracy(policy, ref, val, batch_size=16, beta=BETA)
    assert metrics == {"reward_accuracy": 0.5, "reward_margin": 0.0, "chosen_reward": 0.0,
                       "rejected_reward": 0.0, "loss": pytest.approx(math.log(2))}
    with pytest.raises(ValueError, match="do not match"):
        ReferencedPairs(val, ref[:-1])


def test_dpo_policy_output_follows_the_trainer_contract(tokenizer, splits):
    _, val = splits
    seed_everything(0)
    moe = MiniMindForCausalLM(preset_config("tiny-moe", vocab_size=len(tokenizer),
                                            num_hidden_layers=1))
    rows = ReferencedPairs(val, reference_logps(moe, val, batch_size=16))
    batch = next(eval_pair_batches(rows, 2))
    output = DPOPolicy(moe.eval(), BETA)(**batch, num_items_in_batch=torch.tensor(8))
    # 2 of the step's 8 pairs, each at log(2); plus the MoE balance loss weighted by 2 / 8.
    expected = 2 * math.log(2) / 8 + moe.config.router_aux_loss_coef * output.aux_loss * 2 / 8
    assert output.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert output.aux_loss.item() > 0.9  # about 1 for a balanced router
    assert set(output.metrics) == {"reward_accuracy", "reward_margin", "chosen_reward",
                                   "rejected_reward"}
    assert abs(output.metrics["reward_margin"].item()) < 1e-5


# --- training -----------------------------------------------------------------------------------


def test_dpo_through_the_trainer_learns_held_out_preferences(tokenizer, splits, tmp_path):
    train, val = splits
    policy = tiny_lm(len(tokenizer))
    train_ref = reference_logps(policy, train, batch_size=32)
    val_ref = reference_logps(policy, val, batch_size=32)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        metrics = preference_accuracy(model.model, val_ref, val, batch_size=32, beta=BETA)
        return {f"val_{name}": value for name, value in metrics.items()}

    before = evaluate(DPOPolicy(policy, BETA))
    logged, log_metrics = recorder()
    config = train_config(max_steps=60, lr=1e-2, log_every=5, eval_every=20)
    batches = PairBatchStream(ReferencedPairs(train, train_ref), 8, seed=config.seed)
    trainer = Trainer(DPOPolicy(policy, BETA), config, batches, tmp_path, device="cpu",
                      count_items=count_pairs, log_metrics=log_metrics, evaluate=evaluate)
    final = trainer.fit()

    assert before == {"val_reward_accuracy": 0.5, "val_reward_margin": 0.0,
                      "val_chosen_reward": 0.0, "val_rejected_reward": 0.0,
                      "val_loss": pytest.approx(math.log(2))}
    val = {step: logged[step] for step in (20, 40, 60)}
    assert val[60]["val_reward_accuracy"] > 0.9
    assert val[60]["val_reward_margin"] > max(1.0, val[20]["val_reward_margin"])
    assert val[60]["val_loss"] < 0.2 < math.log(2)
    assert val[60]["val_chosen_reward"] > val[60]["val_rejected_reward"]
    assert final["reward_accuracy"] > 0.9 and final["reward_margin"] > 1.0  # training window
    assert logged[60]["loss"] < 0.2 < logged[5]["loss"]
    assert {"reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
            "tokens_per_s", "grad_norm", "lr"} <= set(logged[5])
    assert "val_reward_accuracy" not in logged[5]


def test_first_step_loss_is_log2_and_accumulation_matches_larger_batch(
    tokenizer, splits, tmp_path
):
    train, _ = splits

    def run(micro_batch_size: int, grad_accum_steps: int, name: str):
        logged, log_metrics = recorder()
        config = train_config(micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps)
        policy = tiny_lm(len(tokenizer))
        rows = ReferencedPairs(train, reference_logps(policy, train, batch_size=32))
        batches = PairBatchStream(rows, micro_batch_size, seed=config.seed)
        trainer = Trainer(DPOPolicy(policy, BETA), config, batches, tmp_path / name,
                          device="cpu", count_items=count_pairs, log_metrics=log_metrics)
        trainer.fit()
        return logged, trainer.raw_model

    logged_accum, accumulated = run(4, 2, "accum")
    logged_big, big = run(8, 1, "big")

    # Step 1 trains the reference itself: every pair costs log(2) only if N counts pairs.
    assert logged_big[1]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(logged_big[1]["reward_margin"]) < 1e-4
    for step in range(1, 5):
        for key in ("loss", "grad_norm", "reward_accuracy", "reward_margin", "chosen_reward"):
            assert logged_accum[step][key] == pytest.approx(logged_big[step][key], rel=1e-4,
                                                            abs=1e-6), (step, key)
    # Padding to another length rounds differently; Adam magnifies that on tiny gradients.
    for name, value in big.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, rtol=1e-3, atol=1e-4)


# --- trainer additions with a scripted model ---------------------------------------------------


@dataclass
class ScriptedOutput:
    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor]


class ScriptedModel(torch.nn.Module):
    """Loss = weight * (items in this batch) / N; reports its call number (and rank) as metrics."""

    def __init__(self, rank: int = 0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.rank = rank
        self.calls = 0
        self.seen_num_items: list[int] = []

    def forward(self, input_ids, labels, num_items_in_batch) -> ScriptedOutput:
        self.calls += 1
        self.seen_num_items.append(int(num_items_in_batch))
        items = input_ids.shape[0]
        return ScriptedOutput(self.weight * items / num_items_in_batch,
                              {"call": float(self.calls), "loss": 123.0, "rank": self.rank,
                               "tensor_metric": torch.tensor(2.0 * self.calls)})


class RowBatches:
    """Micro-batches of 1, 2, 3, ... rows (two positions each, one loss token each)."""

    def __init__(self) -> None:
        self.calls = 0

    def __next__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"input_ids": torch.zeros(self.calls, 2, dtype=torch.long),
                "labels": torch.ones(self.calls, 2, dtype=torch.long)}

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]


def test_trainer_counts_items_and_averages_model_metrics_over_the_log_window(tmp_path):
    logged, log_metrics = recorder()
    model = ScriptedModel()
    config = train_config(max_steps=4, grad_accum_steps=2, log_every=2, warmup_steps=0)
    Trainer(model, config, RowBatches(), tmp_path / "rows", device="cpu",
            count_items=lambda batch: 10 * batch["input_ids"].shape[0],
            log_metrics=log_metrics).fit()
    # Step 1 reads micro-batches of 1 and 2 rows: N = 10 * (1 + 2); step 2: 10 * (3 + 4).
    assert model.seen_num_items == [30, 30, 70, 70, 110, 110, 150, 150]
    assert logged[2]["call"] == pytest.approx(2.5)  # mean over the window's calls 1..4
    assert logged[4]["call"] == pytest.approx(6.5)
    assert logged[4]["tensor_metric"] == pytest.approx(13.0)
    assert logged[2]["loss"] == pytest.approx(0.1, rel=1e-2)  # the trainer's loss wins the clash

    default = ScriptedModel()
    Trainer(default, config, RowBatches(), tmp_path / "tokens", device="cpu").fit()
    assert default.seen_num_items[:2] == [3, 3]  # default: loss tokens (labels[:, 1:])


def scripted_ddp_rank(rank: int, world_size: int, directory: Path) -> None:
    """One rank of a gloo run of the scripted model; rank 0 saves what it logged and saw."""
    dist.init_process_group("gloo", init_method=f"file://{directory / 'rendezvous'}",
                            rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    logged, log_metrics = recorder()
    model = ScriptedModel(rank)
    config = train_config(max_steps=2, grad_accum_steps=2, log_every=2, warmup_steps=0)
    Trainer(model, config, RowBatches(), directory / "checkpoint", device="cpu",
            count_items=lambda batch: 10 * batch["input_ids"].shape[0],
            log_metrics=log_metrics).fit()
    if rank == 0:
        torch.save({"logged": logged, "seen": model.seen_num_items}, directory / "rank0.pt")
    dist.destroy_process_group()


def test_ddp_sums_items_and_averages_model_metrics_over_ranks(tmp_path):
    mp.start_processes(scripted_ddp_rank, args=(2, tmp_path), nprocs=2, start_method="fork")
    result = torch.load(tmp_path / "rank0.pt")
    assert result["seen"] == [60, 60, 140, 140]  # 10 x rows of both ranks' micro-batches
    assert result["logged"][2]["rank"] == 0.5  # mean of rank 0's and rank 1's metric
    assert result["logged"][2]["call"] == pytest.approx(2.5)
