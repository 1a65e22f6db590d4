"""eval_vlm: turns scored as their records say (type, choices) or by the length fallback, the
majority-answer baseline, question selection, and the stage's output files."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from minimind.data.vlm_tokens import IMAGE_PAD
from minimind.model import MiniMindForCausalLM, MiniMindVLM, preset_config
from minimind.tokenizer import train_tokenizer
from minimind.vlm_eval import (
    answer_turns,
    answer_words,
    evaluate_vqa,
    majority_baselines,
    overall,
    rouge_l,
    score_replies,
    typed_answers,
    vqa_report,
    vqa_turns,
)
from stages.eval_vlm import rows_within
from tests.project import copy_project, run, set_param, stage_env
from tests.vlm_data import (
    FEATURE_DIM,
    IMAGE_TOKENS,
    make_records,
    small_tokenizer,
    tokenizer_texts,
    write_clean_vlm,
    write_feature_cache,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def row(*questions: tuple[str, str], types: list | None = None, choices: list | None = None,
        as_json: bool = True) -> dict:
    """A clean vlm row; the evaluation fields JSON text as in the clean shards (or lists)."""
    turns = []
    for question, answer in questions:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    out = {"conversations": json.dumps(turns, ensure_ascii=False), "images": ["a"]}
    for key, value in (("answer_types", types), ("answer_choices", choices)):
        if value is not None:
            out[key] = json.dumps(value, ensure_ascii=False) if as_json else value
    return out


def scored(rows: list[dict], replies: list[str]) -> dict:
    return score_replies(vqa_turns(rows), replies)


# --------------------------------------------------------------------------- typed turns


def test_typed_turns_are_scored_per_type_with_chance_from_their_choices() -> None:
    rows = [row(("<image>\nWhat colour is the star?", "Red."), ("How many?", "3"),
                types=["colour", "count"], choices=[COLOURS, ["1", "2", "3", "4"]]),
            row(("<image>\nAnd this one?", "blue"), types=["colour"], choices=[COLOURS],
                as_json=False),  # lists work as well as JSON text
            row(("<image>\nWhich is bigger?", "second"), types=["compare"],
                choices=[["first", "second"]])]
    turns = vqa_turns(rows)
    assert [kind for _, kind in turns] == ["colour", "count", "colour", "compare"]
    assert turns[0][0].choices == tuple(COLOURS)
    assert turns[0][0].question == "What colour is the star?"
    scores = score_replies(turns, ["red", "4", "Blue!", "second"])
    assert scores == {
        "colour": {"correct": 2, "total": 2, "accuracy": 1.0, "chance": 1 / 6},
        "compare": {"correct": 1, "total": 1, "accuracy": 1.0, "chance": 0.5},
        "count": {"correct": 0, "total": 1, "accuracy": 0.0, "chance": 0.25},
    }


def test_chance_is_the_mean_over_the_turns_and_unknown_without_every_turns_choices() -> None:
    rows = [row(("Q?", "yes"), types=["yes_no"], choices=[["yes", "no"]]),
            row(("Q?", "maybe"), types=["yes_no"], choices=[["yes", "no", "maybe", "never"]]),
            row(("Q?", "a"), types=["letter"], choices=[["a", "b"]]),
            row(("Q?", "b"), types=["letter"])]  # typed, but no choices: chance unknown
    scores = scored(rows, ["yes", "no", "a", "b"])
    assert scores["yes_no"]["chance"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert scores["letter"] == {"correct": 2, "total": 2, "accuracy": 1.0}


# --------------------------------------------------------------------------- the fallback


def test_untyped_turns_fall_back_on_the_reference_length() -> None:
    long_en = "A large red circle at the top left and a small blue star in the center."
    long_zh = "图中有一只红色的猫坐在桌子上。"
    rows = [row(("<image>\nWhere?", "Top left."), ("How many?", "3")),  # no fields at all
            row(("<image>\n图里是什么颜色？", "红色。"), ("<image>\n描述一下。", long_zh)),
            row(("<image>\nDescribe the image.", long_en), ("And the star?", "blue"),
                types=[None, "colour"])]  # a null type falls back too
    turns = vqa_turns(rows)
    assert [kind for _, kind in turns] == ["short_answer", "short_answer", "short_answer", "open",
                                           "open", "colour"]
    assert [kind for _, kind in vqa_turns(rows, short_answer_words=1)][:3] == [
        "open", "short_answer", "open"]  # "top left" is 2 words, "红色" 2 characters
    replies = ["top left", "three", "红色", "一只红色的猫在桌子上", "", "blue"]
    scores = score_replies(turns, replies)
    assert scores["short_answer"] == {"correct": 2, "total": 3, "accuracy": 2 / 3}  # no chance
    assert scores["colour"] == {"correct": 1, "total": 1, "accuracy": 1.0}
    assert scores["open"]["measure"] == "rouge_l_f1" and scores["open"]["total"] == 2
    assert scores["open"]["score"] == pytest.approx(rouge_l(replies[3], long_zh) / 2)  # "" -> 0
    assert 0.5 < rouge_l(replies[3], long_zh) < 1  # partial credit, by characters
    assert "accuracy" not in scores["open"] and "chance" not in scores["open"]


@pytest.mark.parametrize(("text", "words"), [
    ("Top left.", ["top", "left"]), ("3", ["3"]), ("红色的圆", ["红", "色", "的", "圆"]),
    ("Ｒｅｄ！", ["red"]), ("a red 圆, two", ["a", "red", "圆", "two"]), ("...", [])])
def test_answer_words_split_latin_words_and_han_characters(text: str, words: list[str]) -> None:
    assert answer_words(text) == words


def test_rouge_l_is_the_f1_of_the_longest_common_subsequence() -> None:
    assert rouge_l("the red circle", "The red circle.") == 1.0
    assert rouge_l("red circle", "a red circle on the left") == pytest.approx(0.5)  # P 1, R 1/3
    assert rouge_l("circle red", "red circle") == 0.5  # order matters
    assert rouge_l("", "red") == 0.0 and rouge_l("", "") == 1.0 and rouge_l("x", "y") == 0.0


# --------------------------------------------------------------------------- baselines


def test_typed_answers_give_every_turn_its_kind_and_normalised_reference() -> None:
    rows = [row(("<image>\nWhat colour is the star?", "Red."), ("Why?", "because"),
                types=["colour", None]),
            row(("<image>\nWhat is going on?", "Two cats play with a ball of red wool."))]
    assert typed_answers(rows) == [("colour", "red"), ("short_answer", "because"),
                                   ("open", "two cats play with a ball of red wool")]


def test_majority_baseline_is_the_train_majority_scored_on_held_out() -> None:
    train = [("colour", "red")] * 3 + [("colour", "blue"), ("count", "2")]
    held_out = [("colour", "red"), ("colour", "blue"), ("colour", "green"), ("count", "2"),
                ("shape", "star")]
    assert majority_baselines(train, held_out) == {
        "colour": {"answer": "red", "accuracy": 1 / 3},
        "count": {"answer": "2", "accuracy": 1.0},
        "shape": {"answer": None, "accuracy": 0.0},  # never seen in training
    }


def test_open_majority_baseline_is_scored_by_rouge_l() -> None:
    common = "a red circle"
    train = [("open", common)] * 2 + [("open", "a blue star")]
    held_out = [("open", "a red circle on the left"), ("open", "two green squares")]
    baseline = majority_baselines(train, held_out)["open"]
    assert baseline["answer"] == common
    assert baseline["score"] == pytest.approx((rouge_l(common, held_out[0][1]) + 0) / 2)


def test_report_puts_the_baselines_beside_the_scores() -> None:
    rows = [row(("Q?", "red"), ("Where?", "top"), ("Tell me.", "A red circle at the top."),
                types=["colour", None, None], choices=[COLOURS, None, None]),
            row(("Q?", "blue"), types=["colour"], choices=[COLOURS])]
    train = [row(("Q?", "blue"), ("Where?", "top"), ("Tell me.", "A red circle at the top."),
                 types=["colour", None, None], choices=[COLOURS, None, None])] * 2
    turns = vqa_turns(rows)
    report = vqa_report(turns, ["red", "left", "A red circle.", "green"], typed_answers(train))
    assert report["colour"] == {"correct": 1, "total": 2, "accuracy": 0.5, "chance": 1 / 6,
                                "majority_baseline": 0.5, "majority_answer": "blue",
                                "accuracy_over_chance": 3.0}
    assert report["short_answer"] == {"correct": 0, "total": 1, "accuracy": 0.0,
                                      "majority_baseline": 1.0, "majority_answer": "top"}
    assert report["open"]["majority_baseline"] == 1.0  # the same caption every time
    assert report["open"]["majority_answer"] == "a red circle at the top"
    assert overall(report) == {"correct": 1, "total": 3, "accuracy": 1 / 3}  # open left out


@pytest.mark.parametrize(("limit", "picked", "questions"), [
    (1, [0], 1), (5, [0, 11], 4), (12, [0, 2, 4, 7, 9, 11], 12), (100, list(range(12)), 24)])
def test_rows_within_caps_questions_and_spreads_rows(limit: int, picked: list[int],
                                                     questions: int) -> None:
    question = ("What colour is the star?", "red")
    rows = [{**row(*[question] * (1 + i % 3)), "images": [str(i)]}
            for i in range(12)]  # 1, 2, 3, 1, 2, 3, ... questions: 24 in all
    chosen = rows_within(rows, limit)
    assert [r["images"] for r in chosen] == [[str(i)] for i in picked]
    assert sum(len(answer_turns(r)) for r in chosen) == questions


# --------------------------------------------------------------------------- with a model


class Features:
    """An in-memory feature cache: any sha gets noise of the right shape."""

    num_tokens, feature_dim = IMAGE_TOKENS, FEATURE_DIM

    def __contains__(self, sha: object) -> bool:
        return True

    def __getitem__(self, sha: str) -> np.ndarray:
        return np.random.default_rng(len(sha)).normal(size=(IMAGE_TOKENS, FEATURE_DIM))


def tiny_vlm(tokenizer) -> MiniMindVLM:
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(preset_config("tiny", vocab_size=len(tokenizer),
                                            num_hidden_layers=1))
    return MiniMindVLM.from_language_model(llm, FEATURE_DIM, IMAGE_TOKENS,
                                           tokenizer.convert_tokens_to_ids(IMAGE_PAD))


def test_a_model_is_scored_on_typed_and_untyped_rows_without_crashing() -> None:
    tokenizer = small_tokenizer()
    vlm = tiny_vlm(tokenizer).eval()
    long_answer = "这是一张红色的圆形图片，背景是灰色的，圆在左上角。"  # MiniMind-V style
    rows = [row(("<image>\n这是什么颜色？", "红色"), ("详细描述这张图片。", long_answer)),
            row(("<image>\nWhat colour is the circle?", "red"), types=["colour"],
                choices=[COLOURS])]
    report = evaluate_vqa(vlm, tokenizer, rows, rows, Features(), max_new_tokens=3,
                          open_max_new_tokens=6, batch_size=2)
    assert set(report) == {"colour", "open", "short_answer"}
    assert report["colour"]["chance"] == pytest.approx(1 / 6)
    assert report["colour"]["majority_answer"] == "red"
    assert 0 <= report["open"]["score"] <= 1 and report["open"]["majority_baseline"] == 1.0
    assert "chance" not in report["short_answer"]


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
    sources = yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]["sources"]
    set_param(tmp_path, "data.sources", sources + [  # eval_vlm's sources must be vlm sources
        {"name": name, "uri": "builtin:scene_vqa", "kind": "vlm"} for name in ("vqa", "captions")])
    for key, value in {"sources": ["vqa"], "caption_sources": ["captions"], "max_questions": 6,
                       "captions": 2, "max_new_tokens": 3, "caption_max_new_tokens": 4}.items():
        set_param(tmp_path, f"eval_vlm.{key}", value)

    result = run([sys.executable, "-m", "stages.eval_vlm"], tmp_path,
                 stage_env(OMP_NUM_THREADS="1"))

    metrics = json.loads((tmp_path / "metrics" / "eval_vlm.json").read_text())
    assert {"colour", "short_answer", "overall"} <= set(metrics) <= {
        "colour", "which", "short_answer", "overall"}  # types from the rows' answer_types
    colour = metrics["colour"]
    assert sum(metrics[k]["total"] for k in metrics if k != "overall") == metrics["overall"][
        "total"] <= 6
    assert colour["chance"] == pytest.approx(1 / 6)  # from the rows' answer_choices
    assert "chance" not in metrics["short_answer"]  # "What shape is it?" is untyped
    assert metrics["short_answer"]["majority_answer"] == "circle"
    assert colour["accuracy"] == colour["correct"] / colour["total"]
    assert colour["accuracy_over_chance"] == pytest.approx(colour["accuracy"] * 6)
    train_answers = Counter(answer for kind, answer in typed_answers(
        [{**r, "conversations": json.dumps(r["conversations"])} for r in train
         if r["source"] == "vqa"]) if kind == "colour")
    assert colour["majority_answer"] == train_answers.most_common(1)[0][0]
    samples = json.loads((tmp_path / "metrics" / "vlm_samples.json").read_text())
    assert len(samples) == 2
    assert all(s["question"] == "Describe the image." and s["reference"].startswith("A ")
               for s in samples)
    assert "[eval_vlm] colour" in result.stdout and "chance unknown" in result.stdout
