"""Held-out evaluation helpers: even sampling and the multiple-choice protocol."""

from __future__ import annotations

import pytest

import minimind.evaluation as evaluation
from minimind.evaluation import multiple_choice_accuracy, perplexity, spread


def test_spread_covers_the_whole_sequence() -> None:
    assert spread(list(range(10)), 3) == [0, 4, 9]
    assert spread(list(range(10)), 1) == [0]
    assert spread([1, 2], 5) == [1, 2]
    assert perplexity(0.0, 10) == 1.0


QUESTIONS = [([{"role": "user", "content": f"q{i}"}], f"answer {i}") for i in range(12)]


def test_multiple_choice_scores_the_true_answer_wherever_it_sits(monkeypatch) -> None:
    def oracle(model, tokenizer, prompt, answer):  # prefers each question's own answer
        return 0.0 if answer.endswith(prompt[0]["content"][1:]) else -1.0

    monkeypatch.setattr(evaluation, "answer_logprob", oracle)
    result = multiple_choice_accuracy(None, None, QUESTIONS, choices=4, seed=0)
    assert result == {"accuracy": 1.0, "chance": 0.25, "questions": 12}

    monkeypatch.setattr(evaluation, "answer_logprob",
                        lambda m, t, prompt, answer: -oracle(m, t, prompt, answer))
    assert multiple_choice_accuracy(None, None, QUESTIONS, 4, seed=0)["accuracy"] == 0.0
    # A model that cannot tell answers apart: ties must not favour the true answer.
    monkeypatch.setattr(evaluation, "answer_logprob", lambda *args: 0.0)
    assert multiple_choice_accuracy(None, None, QUESTIONS, 4, seed=0)["accuracy"] < 0.75

    with pytest.raises(ValueError, match="need at least 4 questions"):
        multiple_choice_accuracy(None, None, QUESTIONS[:3], 4, seed=0)
