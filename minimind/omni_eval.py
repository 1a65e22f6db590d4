"""Held-out omni evaluation: ASR error rates against a trivial baseline, and spoken-question VQA.

A held-out omni record is one of three tasks, told apart by its media and answer:

- transcription: audio and no image; the reply is scored as character and word error rate
  (`minimind.audio.asr.error_rate`, after the same normalisation on both sides). The trivial
  baseline is the best reply that ignores the audio: the train split's most frequent
  transcript given to every clip (or the empty reply, CER 1.0, if that is better), so a model
  beats it only by hearing what was said;
- spoken question: image and audio, with a short scene answer ("red", "3", "top left"); exact
  match per answer type beside chance (1 / the type's answers);
- spoken caption request: image and audio, answered by a caption; sampled, not scored.

Replies are greedy, from `minimind.vlm_eval.generate_replies` with the clips attached.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minimind.audio.asr import error_rate, normalise
from minimind.data.vlm_tokens import AudioFeatures, Features, parse_messages
from minimind.vlm_eval import generate_replies, normalise_answer


@dataclass(frozen=True)
class OmniTurn:
    """The first question of a held-out omni record, with its media and reference."""

    task: str  # "transcribe" | "question" | "caption"
    kind: str | None  # the answer type of a spoken question ("colour", ...)
    messages: list[dict]
    images: tuple[str, ...]
    audios: tuple[str, ...]
    reference: str


def answer_kind(answer: str, answer_sets: Mapping[str, Sequence[str]]) -> str | None:
    """The type whose answer set holds `answer` (normalised), or None."""
    answer = normalise_answer(answer)
    return next((kind for kind, answers in answer_sets.items() if answer in answers), None)


def omni_turns(rows: Sequence[Mapping[str, Any]], answer_sets: Mapping[str, Sequence[str]]
               ) -> list[OmniTurn]:
    """The first (user, assistant) turn of each row that plays audio, as an `OmniTurn`."""
    turns = []
    for row in rows:
        messages = parse_messages(row["conversations"])
        audios = tuple(row.get("question_audios") or ())
        if len(messages) < 2 or not audios or messages[1]["role"] != "assistant":
            continue
        images, reference = tuple(row["images"]), messages[1]["content"]
        kind = answer_kind(reference, answer_sets) if images else None
        task = "transcribe" if not images else ("question" if kind else "caption")
        turns.append(OmniTurn(task, kind, messages[:1], images, audios, reference))
    return turns


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
                  audio: AudioFeatures, answer_sets: Mapping[str, Sequence[str]],
                  max_new_tokens: int = 48, batch_size: int = 16, samples: int = 8
                  ) -> dict[str, Any]:
    """ASR CER/WER beside the audio-blind baseline, spoken-question accuracy per answer type
    beside chance, and up to `samples` replies per task (reference beside reply)."""
    turns = omni_turns(rows, answer_sets)
    replies = generate_replies(model, tokenizer, vision,
                               [(turn.messages, turn.images) for turn in turns], max_new_tokens,
                               batch_size, audios=[turn.audios for turn in turns],
                               audio_features=audio)
    by_task: dict[str, list[tuple[OmniTurn, str]]] = {}
    for turn, reply in zip(turns, replies, strict=True):
        by_task.setdefault(turn.task, []).append((turn, reply))
    metrics: dict[str, Any] = {"records": len(turns),
                               "tasks": {task: len(pairs) for task, pairs in by_task.items()}}
    if transcribed := by_task.get("transcribe"):
        references = [turn.reference for turn, _ in transcribed]
        hypotheses = [reply for _, reply in transcribed]
        train = [t.reference for t in omni_turns(train_rows, answer_sets)
                 if t.task == "transcribe"]
        baseline = constant_baseline(train, references)
        metrics["asr"] = {"cer": error_rate(references, hypotheses, "char"),
                          "wer": error_rate(references, hypotheses, "word"),
                          "clips": len(transcribed), "baseline": baseline}
        metrics["asr"]["beats_baseline"] = metrics["asr"]["cer"] < baseline["cer"]
    scores: dict[str, dict[str, Any]] = {}
    for turn, reply in by_task.get("question", []):
        score = scores.setdefault(turn.kind, {"correct": 0, "total": 0})
        score["total"] += 1
        score["correct"] += normalise_answer(reply) == normalise_answer(turn.reference)
    for kind, score in scores.items():
        score["accuracy"] = score["correct"] / score["total"]
        score["chance"] = 1 / len(answer_sets[kind])
    metrics["spoken_vqa"] = dict(sorted(scores.items()))
    metrics["samples"] = {task: [{"reference": turn.reference, "reply": reply,
                                  "images": list(turn.images), "audios": list(turn.audios)}
                                 for turn, reply in pairs[:samples]]
                          for task, pairs in sorted(by_task.items())}
    return metrics
