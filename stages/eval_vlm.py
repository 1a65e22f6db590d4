"""eval_vlm: held-out VQA of models/vlm scored per question type as the records say, and captions.

Every question of the held-out conversations of `eval_vlm.sources` (clean val split, their
images read from the feature cache) is answered greedily and scored per kind by
`minimind.vlm_eval`: the type and possible answers come from the records' optional
`answer_types` / `answer_choices` fields (exact match beside chance = 1 / the choices), and a
turn with no type falls back on its reference's length: at most `eval_vlm.short_answer_words`
words is a `short_answer` (exact match, chance unknown), longer is `open` (ROUGE-L F1 of the
reply, up to `caption_max_new_tokens` tokens long). Beside each score stands the majority
baseline (the train split's most frequent answer of that kind, scored the same way), so "above
chance" cannot come from answer priors alone; `overall` is the exact-match accuracy over every
exact-scored kind. Writes metrics/eval_vlm.json and metrics/vlm_samples.json (caption replies
to held-out images of `eval_vlm.caption_sources`, beside their references).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean/vlm")
FEATURES_DIR = Path("data/features/vision")
MODEL_DIR = Path("models/vlm")
METRICS = Path("metrics/eval_vlm.json")
SAMPLES = Path("metrics/vlm_samples.json")


def rows_within(rows: Sequence[dict[str, Any]], max_questions: int) -> list[dict[str, Any]]:
    """Rows spread evenly over `rows` whose questions number at most `max_questions` (stored
    order groups sources and templates, so never just the first)."""
    from minimind.evaluation import spread
    from minimind.vlm_eval import answer_turns

    counts = [len(answer_turns(row)) for row in rows]
    total = sum(counts)
    if total <= max_questions:
        return list(rows)
    take = max(1, math.floor(len(rows) * max_questions / total))
    while take > 1 and sum(counts[i] for i in spread(range(len(rows)), take)) > max_questions:
        take -= 1
    return [rows[i] for i in spread(range(len(rows)), take)]


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoTokenizer

    from minimind.data.features import FeatureStore
    from minimind.data.vlm_tokens import read_vlm_rows
    from minimind.model.vlm import MiniMindVLM
    from minimind.training.trainer import default_device
    from minimind.vlm_eval import caption_samples, describe, evaluate_vqa, overall
    from pipelines.atomic import write_json

    opts = ctx.params.eval_vlm
    clean = ctx.path(CLEAN_DIR)
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(MODEL_DIR))
    model = MiniMindVLM.from_pretrained(ctx.path(MODEL_DIR), dtype=torch.float32)
    model = model.to(default_device()).eval()
    store = FeatureStore(ctx.path(FEATURES_DIR))
    rows = rows_within(read_vlm_rows(clean, "val", opts.sources), opts.max_questions)
    metrics: dict[str, Any] = evaluate_vqa(
        model, tokenizer, rows, read_vlm_rows(clean, "train", opts.sources), store,
        max_new_tokens=opts.max_new_tokens, open_max_new_tokens=opts.caption_max_new_tokens,
        batch_size=opts.batch_size, short_answer_words=opts.short_answer_words)
    scores = dict(metrics)
    metrics["overall"] = overall(scores)
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
        print(f"[eval_vlm] {describe(kind, score)}", flush=True)
    print(f"[eval_vlm] overall {metrics['overall']['accuracy']:.3f} over "
          f"{metrics['overall']['total']} exact-scored held-out questions; {len(samples)} "
          f"caption samples in {SAMPLES}", flush=True)


if __name__ == "__main__":
    run_stage("eval_vlm", main, __doc__, modality="vision")
