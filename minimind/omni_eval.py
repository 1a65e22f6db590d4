"""Held-out omni evaluation: ASR error rates against a trivial baseline, and spoken-question VQA.

Every turn of a held-out omni record whose question plays audio (an `<audio>` marker in its
user turn) is asked, with the images and clips so far attached, and is one of two tasks, told
apart by the record's `answer_types` (`minimind.data.records`), or failing that by its media:

- transcription: a turn typed `transcript`, or an untyped one that shows no image (audio
  alone, so there is nothing but the speech to answer from); the reply is scored as character
  and word error rate (`minimind.audio.asr.error_rate`, after the same normalisation on both
  sides). The trivial baseline is the best reply that ignores the audio: the train split's
  most frequent transcript given to every clip (or the empty reply, CER 1.0, if that is
  better), so a model beats it only by hearing what was said. A dataset of spoken questions
  without images types its turns (any type other than `transcript`) to be scored as questions;
- spoken question: every other turn, scored as eval_vlm scores typed questions
  (`minimind.vlm_eval.vqa_report`): per type from the record, exact match beside chance from
  its `answer_choices`, or by the fallback rule (`short_answer`: exact match; `open`: ROUGE-L),
  each kind beside the train split's majority answer of that kind.

Samples are kept per task: `transcribe`, `question` (exact-scored kinds) and `open`. Replies
are greedy, from `minimind.vlm_eval.generate_replies` with the clips attached.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from minimind.audio.asr import error_rate, normalise
from minimind.data.records import OPEN_TYPE, TRANSCRIPT_TYPE
from minimind.data.vlm_tokens import AUDIO_MARKER, AudioFeatures, Features
from minimind.vlm_eval import (
    SHORT_ANSWER_WORDS,
    Turn,
    answer_turns,
    normalise_answer,
    turn_replies,
    vqa_report,
)


def spoken_turns(row: Mapping[str, Any], short_answer_words: int = SHORT_ANSWER_WORDS
                 ) -> list[tuple[Turn, str]]:
    """(turn, kind) of each turn of `row` whose question plays audio; the kind of a
    transcription is `transcript`, that of a question `Turn.kind`."""
    pairs = []
    for turn in answer_turns(row):
        if AUDIO_MARKER not in turn.messages[-1]["content"]:
            continue
        transcript = turn.answer_type == TRANSCRIPT_TYPE or (
            turn.answer_type is None and not turn.images)
        pairs.append((turn, TRANSCRIPT_TYPE if transcript else turn.kind(short_answer_words)))
    return pairs


def task_of(kind: str) -> str:
    """`transcribe`, `open` or `question`: how a kind is scored (and its samples grouped)."""
    return "transcribe" if kind == TRANSCRIPT_TYPE else "open" if kind == OPEN_TYPE else "question"


def constant_baseline(train_transcripts: Sequence[str], references: Sequence[str]
                      ) -> dict[str, Any]:
    """The best audio-blind reply: the most frequent train transcript or the empty reply,
    whichever has the lower CER on `references`."""
    options = [""]
    if train_transcripts:
        options.append(Counter(normalise(t) for t in train_transcripts).most_common(1)[0][0])
    scored = [(error_rate(references, [text] * len(references), "char"), text)
              for text in options]
    cer, text = min(scored)
    return {"reply": text, "cer": cer,
            "wer": error_rate(references, [text] * len(references), "word")}


def evaluate_omni(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]],
                  train_rows: Sequence[Mapping[str, Any]], vision: Features,
                  audio: AudioFeatures, max_new_tokens: int = 48, batch_size: int = 16,
                  samples: int = 8, short_answer_words: int = SHORT_ANSWER_WORDS
                  ) -> dict[str, Any]:
    """ASR CER/WER beside the audio-blind baseline, spoken-question scores per kind beside
    chance and the majority baseline, and up to `samples` replies per task."""
    per_row = [spoken_turns(row, short_answer_words) for row in rows]
    turns = [pair for pairs in per_row for pair in pairs]
    replies = turn_replies(model, tokenizer, vision, turns, max_new_tokens,
                           batch_size=batch_size, audio_features=audio)
    train = [pair for row in train_rows for pair in spoken_turns(row, short_answer_words)]
    by_task: dict[str, list[tuple[Turn, str, str]]] = {}
    for (turn, kind), reply in zip(turns, replies, strict=True):
        by_task.setdefault(task_of(kind), []).append((turn, kind, reply))
    metrics: dict[str, Any] = {"records": sum(bool(pairs) for pairs in per_row),
                               "turns": len(turns),
                               "tasks": {task: len(items) for task, items in by_task.items()}}
    if transcribed := by_task.get("transcribe"):
        references = [turn.reference for turn, _, _ in transcribed]
        hypotheses = [reply for _, _, reply in transcribed]
        baseline = constant_baseline(
            [turn.reference for turn, kind in train if kind == TRANSCRIPT_TYPE], references)
        metrics["asr"] = {"cer": error_rate(references, hypotheses, "char"),
                          "wer": error_rate(references, hypotheses, "word"),
                          "clips": len(transcribed), "baseline": baseline}
        metrics["asr"]["beats_baseline"] = metrics["asr"]["cer"] < baseline["cer"]
    asked = [(pair, reply) for pair, reply in zip(turns, replies, strict=True)
             if pair[1] != TRANSCRIPT_TYPE]
    metrics["spoken_vqa"] = vqa_report(
        [pair for pair, _ in asked], [reply for _, reply in asked],
        [(kind, normalise_answer(turn.reference)) for turn, kind in train
         if kind != TRANSCRIPT_TYPE])
    metrics["samples"] = {task: [{"reference": turn.reference, "reply": reply,
                                  "images": list(turn.images), "audios": list(turn.audios)}
                                 for turn, _, reply in items[:samples]]
                          for task, items in sorted(by_task.items())}
    return metrics
