"""eval_vlm: question selection, the majority-answer baseline, and the stage's output files."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from minimind.data.builtin.scenes import question_type
from minimind.data.vlm_tokens import IMAGE_PAD
from minimind.model import MiniMindForCausalLM, MiniMindVLM, preset_config
from minimind.tokenizer import train_tokenizer
from stages.eval_vlm import majority_baselines, rows_within, typed_answers
from tests.project import copy_project, run, set_param, stage_env
from tests.vlm_data import (
    FEATURE_DIM,
    IMAGE_TOKENS,
    make_records,
    tokenizer_texts,
    write_clean_vlm,
    write_feature_cache,
)


def row(*questions: str) -> dict:
    turns = []
    for question, answer in questions:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"conversations": json.dumps(turns), "images": ["a"]}


def test_typed_answers_keep_recognised_questions_normalised() -> None:
    rows = [row(("<image>\nWhat colour is the star?", "Red."), ("Why?", "because")),
            row(("<image>\nHow many objects are there?", "3"))]
    assert typed_answers(rows, question_type) == [("colour", "red"), ("count", "3")]


def test_majority_baseline_is_the_train_majority_scored_on_held_out() -> None:
    train = [("colour", "red")] * 3 + [("colour", "blue"), ("count", "2")]
    held_out = [("colour", "red"), ("colour", "blue"), ("colour", "green"), ("count", "2"),
                ("shape", "star")]
    assert majority_baselines(train, held_out) == {
        "colour": {"answer": "red", "accuracy": 1 / 3},
        "count": {"answer": "2", "accuracy": 1.0},
        "shape": {"answer": None, "accuracy": 0.0},  # never seen in training
    }


@pytest.mark.parametrize(("limit", "picked", "questions"), [
    (1, [0], 1), (5, [0, 11], 4), (12, [0, 2, 4, 7, 9, 11], 12), (100, list(range(12)), 24)])
def test_rows_within_caps_questions_and_spreads_rows(limit: int, picked: list[int],
                                                     questions: int) -> None:
    question = ("What colour is the star?", "red")
    rows = [{**row(*[question] * (1 + i % 3), ("Not a template?", "x")), "images": [str(i)]}
            for i in range(12)]  # 1, 2, 3, 1, 2, 3, ... recognised questions: 24 in all
    chosen = rows_within(rows, limit, question_type)
    assert [r["images"] for r in chosen] == [[str(i)] for i in picked]
    assert len(typed_answers(chosen, question_type)) == questions


@pytest.mark.slow
def test_eval_vlm_stage_writes_accuracy_baselines_and_samples(tmp_path: Path) -> None:
    copy_project(tmp_path)
    train, features = make_records(30, seed=1)
    val, val_features = make_records(8, seed=2, first_image=1000)
    write_clean_vlm(tmp_path / "data" / "clean" / "vlm", "train", train)
    write_clean_vlm(tmp_path / "data" / "clean" / "vlm", "val", val)
    write_feature_cache(tmp_path / "data" / "features" / "vision", {**features, **val_features})
    tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=400, min_frequency=1,
                                show_progress=False)
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(preset_config("tiny", vocab_size=len(tokenizer),
                                            num_hidden_layers=1))
    vlm = MiniMindVLM.from_language_model(llm, FEATURE_DIM, IMAGE_TOKENS,
                                          tokenizer.convert_tokens_to_ids(IMAGE_PAD),
                                          {"encoder": "fake-colour-encoder"})
    vlm.save_pretrained(tmp_path / "models" / "vlm")
    tokenizer.save_pretrained(tmp_path / "models" / "vlm")
    for key, value in {"sources": ["vqa"], "caption_sources": ["captions"], "max_questions": 6,
                       "captions": 2, "max_new_tokens": 3, "caption_max_new_tokens": 4}.items():
        set_param(tmp_path, f"eval_vlm.{key}", value)

    result = run([sys.executable, "-m", "stages.eval_vlm"], tmp_path,
                 stage_env(OMP_NUM_THREADS="1"))

    metrics = json.loads((tmp_path / "metrics" / "eval_vlm.json").read_text())
    assert set(metrics) == {"colour", "overall"}  # "What shape is it?" is no scene template
    colour = metrics["colour"]
    assert colour["total"] == metrics["overall"]["total"] <= 6
    assert colour["chance"] == pytest.approx(1 / 6)
    assert colour["accuracy"] == colour["correct"] / colour["total"]
    train_answers = Counter(answer for kind, answer in typed_answers(
        [{**r, "conversations": json.dumps(r["conversations"])} for r in train], question_type))
    majority = train_answers.most_common(1)[0][0]
    assert colour["majority_answer"] == majority
    samples = json.loads((tmp_path / "metrics" / "vlm_samples.json").read_text())
    assert len(samples) == 2
    assert all(s["question"] == "Describe the image." and s["reference"].startswith("A ")
               for s in samples)
    assert "[eval_vlm] colour" in result.stdout
