"""Held-out evaluation: perplexity by group and multiple-choice accuracy against chance.

Multiple choice is how a model too small to answer freely can still be measured honestly: for
each held-out question the model scores the true answer and `n - 1` answers to other
questions by mean log-probability per answer token; accuracy is compared with chance, 1 / n.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

T = TypeVar("T")


@torch.no_grad()
def text_loss(model: Any, tokenizer: Any, texts: Iterable[str], max_tokens: int
              ) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) and token count over texts, each cut to max_tokens."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
        if len(ids) < 2:
            continue
        input_ids = torch.tensor([ids], device=device)
        logits = model(input_ids=input_ids).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, input_ids[0, 1:], reduction="sum"))
        count += len(ids) - 1
    return total, count


def spread(items: Sequence[T], count: int) -> list[T]:
    """`count` items evenly spaced over `items` (all of them if there are no more than that).

    Held-out sets are stored grouped by source, so "the first n" would measure one corpus only.
    """
    if len(items) <= count:
        return list(items)
    step = (len(items) - 1) / (count - 1) if count > 1 else 0
    return [items[round(i * step)] for i in range(count)]


def perplexity(total_loss: float, tokens: int) -> float:
    return math.exp(total_loss / tokens) if tokens else float("nan")


@torch.no_grad()
def answer_logprob(model: Any, tokenizer: Any, prompt: list[dict], answer: str) -> float:
    """Mean log-probability per token of `answer` as the assistant's reply to `prompt`."""
    device = next(model.parameters()).device
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    reply = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = torch.tensor([list(prefix) + reply], device=device)
    logits = model(input_ids=ids).logits[0, len(prefix) - 1:-1].float()
    return float(F.log_softmax(logits, dim=-1).gather(1, ids[0, len(prefix):, None]).mean())


def multiple_choice_accuracy(model: Any, tokenizer: Any,
                             questions: list[tuple[list[dict], str]], choices: int,
                             seed: int) -> dict[str, float]:
    """Accuracy of picking each question's own answer among `choices` candidates."""
    if len(questions) < choices:
        raise ValueError(f"need at least {choices} questions, got {len(questions)}")
    rng = random.Random(seed)
    correct = 0
    for i, (prompt, answer) in enumerate(questions):
        others = rng.sample([j for j in range(len(questions)) if j != i], choices - 1)
        candidates = [questions[j][1] for j in others]
        position = rng.randrange(choices)  # a random slot, so ties cannot favour the answer
        candidates.insert(position, answer)
        scores = [answer_logprob(model, tokenizer, prompt, c) for c in candidates]
        correct += max(range(choices), key=scores.__getitem__) == position
    return {"accuracy": correct / len(questions), "chance": 1 / choices,
            "questions": len(questions)}
