"""Held-out VLM evaluation: VQA scored per question type as the records say, and caption samples.

Every question/answer turn of a held-out conversation is asked on its own: the prompt is the
conversation up to that user turn (earlier reference answers included, the images of the turns
so far attached, and for an omni row its clips), and the reply is greedy. Prompts are answered
in left-padded batches, the image features of each batch in the order the pad runs appear, as
the model expects.

How a turn is scored comes from the data, never from the generator that made it. Clean rows
keep the optional evaluation fields of `minimind.data.records` (`answer_types`: a type name or
null per assistant turn; `answer_choices`: null or the possible answers per turn), and the gold
answer is the assistant turn itself:

- a typed turn ("colour", "count", ...) is right when the reply equals the reference after
  `normalise_answer` (case, surrounding space, trailing punctuation). Its type's chance is
  1 / len(choices) (the mean over its turns, should they differ) when every turn of the type
  lists its choices; otherwise chance is unknown and left out;
- an untyped turn falls back on its reference's length in `answer_words` (a Latin-script word
  or number, or a single Han character, each): at most `short_answer_words` words (params,
  default `SHORT_ANSWER_WORDS`) make it a `short_answer` question, scored by exact match like a
  typed one, chance unknown; a longer one is `open`, scored by `rouge_l` (ROUGE-L F1 over
  those words: character level for Chinese, word level for Latin script), averaged, so a long
  free-form answer earns partial credit instead of a near-certain exact-match miss. Both
  names may also be given as types.

Beside every kind stands its majority baseline (`majority_baselines`): the train split's most
frequent normalised reference of that kind given as the reply to every held-out turn, scored
by the kind's measure, so "above chance" cannot come from answer priors alone.

Metrics per kind (`vqa_report`): exact kinds `{"correct", "total", "accuracy", "chance"?,
"majority_baseline", "majority_answer", "accuracy_over_chance"?}` (the two marked ? where
chance is known); `open` `{"total", "score", "measure": "rouge_l_f1", "majority_baseline",
"majority_answer"}`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from minimind.data.records import (
    OPEN_TYPE,
    SHORT_ANSWER_TYPE,
    answer_fields,
    normalise_answer,
)
from minimind.data.vlm_tokens import (
    AUDIO_MARKER,
    IMAGE_MARKER,
    AudioFeatures,
    Features,
    count_markers,
    expand_audio,
    expand_images,
    parse_messages,
)
from minimind.evaluation import spread

SHORT_ANSWER_WORDS = 3  # the fallback rule's default: longer untyped answers are `open`
SOFT_MEASURE = "rouge_l_f1"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Turn:
    """One question of a held-out conversation: its prompt, media, reference answer and what
    the record says about it (type and possible answers, None when it says nothing)."""

    messages: list[dict]  # the conversation up to and including the question
    images: tuple[str, ...]  # sha256 of the images shown so far, in marker order
    question: str  # the user's text without the media markers
    reference: str
    audios: tuple[str, ...] = ()  # sha256 of the clips played so far (omni rows)
    answer_type: str | None = None
    choices: tuple[str, ...] | None = None

    def kind(self, short_answer_words: int = SHORT_ANSWER_WORDS) -> str:
        """The record's type, else `short_answer` or `open` by the reference's length."""
        if self.answer_type is not None:
            return self.answer_type
        short = len(answer_words(self.reference)) <= short_answer_words
        return SHORT_ANSWER_TYPE if short else OPEN_TYPE


def answer_turns(row: Mapping[str, Any]) -> list[Turn]:
    """Each (user, assistant) pair of a clean vlm or omni row as a `Turn`, with the row's
    evaluation fields of that assistant turn (see `minimind.data.records.answer_fields`)."""
    messages = parse_messages(row["conversations"])
    images = list(row.get("images") or [])
    clips = list(row.get("question_audios") or [])
    fields = answer_fields(row, messages)
    answers = sum(m["role"] == "assistant" for m in messages)
    types = fields.get("answer_types") or [None] * answers
    choices = fields.get("answer_choices") or [None] * answers
    turns, number = [], -1
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        number += 1
        if i == 0 or messages[i - 1]["role"] != "user":
            continue
        prompt = messages[:i]
        question = messages[i - 1]["content"].replace(IMAGE_MARKER, "").replace(AUDIO_MARKER, "")
        turns.append(Turn(
            messages=prompt,
            images=tuple(images[: count_markers(prompt)]),
            question=question.strip(),
            reference=message["content"],
            audios=tuple(clips[: count_markers(prompt, AUDIO_MARKER)]),
            answer_type=types[number],
            choices=None if choices[number] is None else tuple(choices[number]),
        ))
    return turns


def vqa_turns(rows: Iterable[Mapping[str, Any]], short_answer_words: int = SHORT_ANSWER_WORDS
              ) -> list[tuple[Turn, str]]:
    """(turn, kind) of every QA turn of `rows` (`Turn.kind`)."""
    return [(turn, turn.kind(short_answer_words)) for row in rows for turn in answer_turns(row)]


def typed_answers(rows: Iterable[Mapping[str, Any]], short_answer_words: int = SHORT_ANSWER_WORDS
                  ) -> list[tuple[str, str]]:
    """(kind, normalised reference answer) of every QA turn of `rows`."""
    return [(kind, normalise_answer(turn.reference))
            for turn, kind in vqa_turns(rows, short_answer_words)]


# --------------------------------------------------------------------------- measures


def answer_words(text: str) -> list[str]:
    """The words of an answer, case-folded: runs of letters and digits, each Han character a
    word of its own (Chinese has no spaces). "Top left." -> ["top", "left"]; "红色的圆" -> 4."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _WORD.findall(_HAN.sub(r" \g<0> ", text))


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F1 of `reply` against `reference` over `answer_words`: 2PR / (P + R) with P and
    R the longest common subsequence over the reply's and the reference's length."""
    hyp, ref = answer_words(reply), answer_words(reference)
    if not hyp or not ref:
        return float(hyp == ref)
    previous = [0] * (len(ref) + 1)
    for word in hyp:
        current = [0]
        for j, other in enumerate(ref, 1):
            current.append(previous[j - 1] + 1 if word == other else max(previous[j],
                                                                          current[j - 1]))
        previous = current
    common = previous[-1]
    if not common:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def turn_score(kind: str, reply: str, reference: str) -> float:
    """1.0 / 0.0 by exact match after `normalise_answer`; `rouge_l` for an `open` turn."""
    if kind == OPEN_TYPE:
        return rouge_l(reply, reference)
    return float(normalise_answer(reply) == normalise_answer(reference))


def score_replies(turns: Sequence[tuple[Turn, str]], replies: Sequence[str]
                  ) -> dict[str, dict[str, Any]]:
    """Scores per kind of the (turn, kind) pairs given `replies` (one per pair), sorted by kind:
    {"correct", "total", "accuracy", "chance"?} for exact kinds (chance where every turn of
    the kind lists its choices), {"total", "score", "measure"} for `open`."""
    by_kind: dict[str, list[tuple[Turn, str]]] = defaultdict(list)
    for (turn, kind), reply in zip(turns, replies, strict=True):
        by_kind[kind].append((turn, reply))
    scores: dict[str, dict[str, Any]] = {}
    for kind, pairs in sorted(by_kind.items()):
        values = [turn_score(kind, reply, turn.reference) for turn, reply in pairs]
        if kind == OPEN_TYPE:
            scores[kind] = {"total": len(pairs), "score": sum(values) / len(values),
                            "measure": SOFT_MEASURE}
            continue
        correct = int(sum(values))
        scores[kind] = {"correct": correct, "total": len(pairs), "accuracy": correct / len(pairs)}
        if all(turn.choices for turn, _ in pairs):
            sizes = {len(turn.choices) for turn, _ in pairs}
            scores[kind]["chance"] = (1 / sizes.pop() if len(sizes) == 1 else
                                      sum(1 / len(turn.choices) for turn, _ in pairs) / len(pairs))
    return scores


def majority_baselines(train: Sequence[tuple[str, str]], held_out: Sequence[tuple[str, str]]
                       ) -> dict[str, dict[str, Any]]:
    """Per kind of `held_out` ((kind, normalised answer) pairs): the train split's most frequent
    answer of that kind (None if it has none; ties go to the first seen) and how it scores as
    the reply to every held-out answer: {"answer", "accuracy"} for exact kinds, {"answer",
    "score"} (mean `rouge_l`) for `open`."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, answer in train:
        counts[kind][answer] += 1
    baselines = {}
    for kind in sorted({kind for kind, _ in held_out}):
        majority = counts[kind].most_common(1)[0][0] if counts[kind] else None
        answers = [answer for k, answer in held_out if k == kind]
        values = [0.0 if majority is None else turn_score(kind, majority, answer)
                  for answer in answers]
        key = "score" if kind == OPEN_TYPE else "accuracy"
        baselines[kind] = {"answer": majority, key: sum(values) / len(values)}
    return baselines


def vqa_report(turns: Sequence[tuple[Turn, str]], replies: Sequence[str],
               train_answers: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """`score_replies` of every kind with its majority baseline (`train_answers`: the train
    split's (kind, normalised answer) pairs) and, where chance is known, accuracy / chance."""
    scores = score_replies(turns, replies)
    baselines = majority_baselines(
        train_answers, [(kind, normalise_answer(turn.reference)) for turn, kind in turns])
    report = {}
    for kind, score in scores.items():
        baseline = baselines[kind]
        entry = {**score, "majority_baseline": baseline.get("accuracy", baseline.get("score")),
                 "majority_answer": baseline["answer"]}
        if "chance" in score:
            entry["accuracy_over_chance"] = score["accuracy"] / score["chance"]
        report[kind] = entry
    return report


def overall(report: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Exact-match accuracy over every exact-scored kind of a report (`open` left out)."""
    exact = [score for score in report.values() if "correct" in score]
    correct, total = sum(s["correct"] for s in exact), sum(s["total"] for s in exact)
    return {"correct": correct, "total": total, "accuracy": correct / total if total else 0.0}


def describe(kind: str, score: Mapping[str, Any]) -> str:
    """One log line of a kind's score beside its baselines."""
    baseline = score.get("majority_baseline")
    majority = "" if baseline is None else f", majority answer {baseline:.3f}"
    if "accuracy" not in score:
        return (f"{kind:12s} {score['measure']} {score['score']:.3f} over {score['total']}"
                f"{majority}")
    chance = f"{score['chance']:.3f}" if "chance" in score else "unknown"
    return (f"{kind:12s} accuracy {score['accuracy']:.3f} ({score['correct']}/{score['total']}); "
            f"chance {chance}{majority}")


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_replies(model: Any, tokenizer: Any, features: Features,
                     prompts: Sequence[tuple[list[dict], Sequence[str]]],
                     max_new_tokens: int, batch_size: int = 32,
                     audios: Sequence[Sequence[str]] | None = None,
                     audio_features: AudioFeatures | None = None) -> list[str]:
    """Greedy assistant replies to (messages, image sha256s) prompts, in the prompts' order.

    An omni model also gets `audios[i]`, the clips (sha256 in `audio_features`) of prompt i's
    `<audio>` markers. Prompts are grouped by length into left-padded batches (less padding
    to run through).
    """
    if features.num_tokens != model.config.image_tokens:
        raise ValueError(f"the feature cache has {features.num_tokens} tokens per image, the "
                         f"model expects {model.config.image_tokens}")
    clips = [list(a) for a in audios] if audios is not None else [[] for _ in prompts]
    if any(clips) and audio_features is None:
        raise ValueError("prompts hold audio but no audio feature cache was given")
    encoded = [
        tokenizer.apply_chat_template(
            expand_audio(expand_images(messages, features.num_tokens),
                         [audio_features.length(sha) for sha in clip] if clip else []),
            add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for (messages, _), clip in zip(prompts, clips, strict=True)
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    replies: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]):] = 1
        shas = [sha for i in chunk for sha in prompts[i][1]]
        image_features = torch.from_numpy(
            np.stack([features[sha] for sha in shas]).astype(np.float32)
            if shas else np.zeros((0, features.num_tokens, features.feature_dim), np.float32))
        extra = {}
        if audio_features is not None:
            tokens = [audio_features[sha] for i in chunk for sha in clips[i]]
            extra["audio_features"] = torch.from_numpy(
                np.concatenate(tokens).astype(np.float32) if tokens
                else np.zeros((0, audio_features.feature_dim), np.float32)).to(device)
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            image_features=image_features.to(device), **extra, max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, i in enumerate(chunk):
            new = output[row, width:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            replies[i] = tokenizer.decode(new, skip_special_tokens=True)
    model.train(was_training)
    return replies


def turn_replies(model: Any, tokenizer: Any, features: Features,
                 turns: Sequence[tuple[Turn, str]], max_new_tokens: int,
                 open_max_new_tokens: int | None = None, batch_size: int = 32,
                 audio_features: AudioFeatures | None = None) -> list[str]:
    """Greedy replies to (turn, kind) pairs, in order: `max_new_tokens` each, or
    `open_max_new_tokens` for `open` turns (long answers) when given."""
    replies: list[str] = [""] * len(turns)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (_, kind) in enumerate(turns):
        long = kind == OPEN_TYPE and open_max_new_tokens is not None
        groups[open_max_new_tokens if long else max_new_tokens].append(i)
    for length, indices in sorted(groups.items()):
        chosen = [turns[i][0] for i in indices]
        for i, reply in zip(indices, generate_replies(
                model, tokenizer, features, [(t.messages, t.images) for t in chosen], length,
                batch_size, audios=[t.audios for t in chosen], audio_features=audio_features),
                strict=True):
            replies[i] = reply
    return replies


def vqa_accuracy(model: Any, tokenizer: Any, rows: Iterable[Mapping[str, Any]],
                 features: Features, max_new_tokens: int = 8, batch_size: int = 32,
                 short_answer_words: int = SHORT_ANSWER_WORDS,
                 open_max_new_tokens: int | None = None) -> dict[str, dict[str, Any]]:
    """`score_replies` of every QA turn of `rows`, per kind (no baselines)."""
    turns = vqa_turns(rows, short_answer_words)
    return score_replies(turns, turn_replies(model, tokenizer, features, turns, max_new_tokens,
                                             open_max_new_tokens, batch_size))


def evaluate_vqa(model: Any, tokenizer: Any, rows: Iterable[Mapping[str, Any]],
                 train_rows: Iterable[Mapping[str, Any]], features: Features,
                 max_new_tokens: int = 8, open_max_new_tokens: int | None = None,
                 batch_size: int = 32, short_answer_words: int = SHORT_ANSWER_WORDS
                 ) -> dict[str, dict[str, Any]]:
    """`vqa_report` of every QA turn of `rows`, the majority baselines from `train_rows`."""
    turns = vqa_turns(rows, short_answer_words)
    replies = turn_replies(model, tokenizer, features, turns, max_new_tokens,
                           open_max_new_tokens, batch_size)
    return vqa_report(turns, replies, typed_answers(train_rows, short_answer_words))


def caption_samples(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]],
                    features: Features, count: int = 4, max_new_tokens: int = 48
                    ) -> list[dict[str, Any]]:
    """Replies to the first question of `count` rows spread over `rows`, beside the
    references: {"question", "images", "reference", "reply"} each."""
    turns = [answer_turns(row)[0] for row in spread(rows, count)]
    replies = generate_replies(model, tokenizer, features,
                               [(turn.messages, turn.images) for turn in turns], max_new_tokens)
    return [{"question": turn.question, "images": list(turn.images),
             "reference": turn.reference, "reply": reply}
            for turn, reply in zip(turns, replies, strict=True)]
