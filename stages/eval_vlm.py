"""eval_vlm: held-out VQA exact-match accuracy of models/vlm per question type, and captions.

Every question of the held-out conversations of `eval_vlm.sources` (clean val split, their
images read from the feature cache) is answered greedily and scored by exact match, per
question type (colour, shape, count, position, compare). Beside each accuracy stand two
baselines: chance (1 / the type's possible answers) and the majority answer (always giving
the train split's most frequent answer of that type), so "above chance" cannot come from
answer priors alone. Writes metrics/eval_vlm.json and metrics/vlm_samples.json (caption replies
to held-out images of `eval_vlm.caption_sources`, beside their references).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean/vlm")
FEATURES_DIR = Path("data/features/vision")
MODEL_DIR = Path("models/vlm")
METRICS = Path("metrics/eval_vlm.json")
SAMPLES = Path("metrics/vlm_samples.json")

QuestionType = Callable[[str], str | None]


def typed_answers(rows: Sequence[dict[str, Any]], question_type: QuestionType
                  ) -> list[tuple[str, str]]:
    """(question type, normalised reference answer) of every recognised question in `rows`."""
    from minimind.vlm_eval import answer_turns, normalise_answer

    return [(kind, normalise_answer(turn.reference)) for row in rows
            for turn in answer_turns(row) if (kind := question_type(turn.question)) is not None]


def rows_within(rows: Sequence[dict[str, Any]], max_questions: int,
                question_type: QuestionType) -> list[dict[str, Any]]:
    """Rows spread evenly over `rows` whose recognised questions number at most
    `max_questions` (stored order groups sources and templates, so never just the first)."""
    from minimind.evaluation import spread

    counts = [len(typed_answers([row], question_type)) for row in rows]
    total = sum(counts)
    if total <= max_questions:
        return list(rows)
    take = max(1, math.floor(len(rows) * max_questions / total))
    while take > 1 and sum(counts[i] for i in spread(range(len(rows)), take)) > max_questions:
        take -= 1
    return [rows[i] for i in spread(range(len(rows)), take)]


def majority_baselines(train: Sequence[tuple[str, str]], held_out: Sequence[tuple[str, str]]
                       ) -> dict[str, dict[str, Any]]:
    """Per type: the train split's most frequent answer and its accuracy on `held_out`."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, answer in train:
        counts[kind][answer] += 1
    baselines = {}
    for kind in sorted({kind for kind, _ in held_out}):
        majority = counts[kind].most_common(1)[0][0] if counts[kind] else None
        answers = [answer for k, answer in held_out if k == kind]
        baselines[kind] = {"answer": majority,
                           "accuracy": sum(a == majority for a in answers) / len(answers)}
    return baselines


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoTokenizer

    from minimind.data.builtin.scenes import ANSWERS, question_type
    from minimind.data.features import FeatureStore
    from minimind.data.vlm_tokens import read_vlm_rows
    from minimind.model.vlm import MiniMindVLM
    from minimind.training.trainer import default_device
    from minimind.vlm_eval import caption_samples, vqa_accuracy
    from pipelines.atomic import write_json

    opts = ctx.params.eval_vlm
    clean = ctx.path(CLEAN_DIR)
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(MODEL_DIR))
    model = MiniMindVLM.from_pretrained(ctx.path(MODEL_DIR), dtype=torch.float32)
    model = model.to(default_device()).eval()
    store = FeatureStore(ctx.path(FEATURES_DIR))
    rows = rows_within(read_vlm_rows(clean, "val", opts.sources), opts.max_questions,
                       question_type)
    scores = vqa_accuracy(model, tokenizer, rows, store, question_type, opts.max_new_tokens,
                          ANSWERS, opts.batch_size)
    baselines = majority_baselines(
        typed_answers(read_vlm_rows(clean, "train", opts.sources), question_type),
        typed_answers(rows, question_type))
    metrics: dict[str, Any] = {}
    for kind, score in scores.items():
        metrics[kind] = {**score, "majority_baseline": baselines[kind]["accuracy"],
                         "majority_answer": baselines[kind]["answer"],
                         "accuracy_over_chance": score["accuracy"] / score["chance"]}
    correct, total = sum(s["correct"] for s in scores.values()), sum(
        s["total"] for s in scores.values())
    metrics["overall"] = {"correct": correct, "total": total,
                          "accuracy": correct / total if total else 0.0}
    samples = []
    if opts.captions:
        samples = caption_samples(model, tokenizer,
                                  read_vlm_rows(clean, "val", opts.caption_sources), store,
                                  opts.captions, opts.caption_max_new_tokens)
    write_json(ctx.path(SAMPLES), samples)
    ctx.write_metrics(METRICS, metrics)
    for path in (METRICS, SAMPLES):
        ctx.run.log_artifact(ctx.path(path))
    for kind, score in scores.items():
        print(f"[eval_vlm] {kind:9s} accuracy {score['accuracy']:.3f} ({score['correct']}/"
              f"{score['total']}); chance {score['chance']:.3f}, majority answer "
              f"{baselines[kind]['accuracy']:.3f}", flush=True)
    print(f"[eval_vlm] overall {metrics['overall']['accuracy']:.3f} over {total} held-out "
          f"questions; {len(samples)} caption samples in {SAMPLES}", flush=True)


if __name__ == "__main__":
    run_stage("eval_vlm", main, __doc__)
