"""Held-out VLM evaluation: exact-match VQA accuracy per question type, and caption samples.

Every question/answer turn of a held-out conversation is asked on its own: the prompt is the
conversation up to that user turn (earlier reference answers included, images of the turns so
far attached), the reply is greedy, and it counts as correct when it equals the reference after
normalisation (case, surrounding space, trailing punctuation). Scene answers are short exact
strings ("red", "top left", "3"), so exact match measures what the model sees, with no judge.
Prompts are answered in left-padded batches, the image features of each batch in the order the
pad runs appear, as the model expects.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from minimind.data.vlm_tokens import (
    IMAGE_MARKER,
    AudioFeatures,
    Features,
    count_markers,
    expand_audio,
    expand_images,
    parse_messages,
)
from minimind.evaluation import spread


@dataclass(frozen=True)
class Turn:
    """One question of a held-out conversation: its prompt, images and reference answer."""

    messages: list[dict]  # the conversation up to and including the question
    images: tuple[str, ...]  # sha256 of the images shown so far, in marker order
    question: str  # the user's text without the image markers
    reference: str


def answer_turns(row: Mapping[str, Any]) -> list[Turn]:
    """Each (user, assistant) pair of a clean vlm row as a `Turn`."""
    messages = parse_messages(row["conversations"])
    images = list(row["images"])
    turns = []
    for i in range(1, len(messages)):
        if messages[i]["role"] == "assistant" and messages[i - 1]["role"] == "user":
            prompt = messages[:i]
            turns.append(Turn(
                messages=prompt,
                images=tuple(images[: count_markers(prompt)]),
                question=messages[i - 1]["content"].replace(IMAGE_MARKER, "").strip(),
                reference=messages[i]["content"],
            ))
    return turns


def normalise_answer(text: str) -> str:
    """Lower case, no surrounding space, no trailing punctuation: "Top left." -> "top left"."""
    return text.strip().lower().rstrip(string.punctuation + " \t\n").strip()


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


def vqa_accuracy(model: Any, tokenizer: Any, rows: Iterable[Mapping[str, Any]],
                 features: Features, question_type: Callable[[str], str | None],
                 max_new_tokens: int = 8, answer_sets: Mapping[str, Sequence[str]] | None = None,
                 batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Exact-match accuracy per question type over every QA turn of `rows`.

    Returns {type: {"correct", "total", "accuracy"}} (plus "chance" = 1 / answers of the type
    when `answer_sets` is given). Questions `question_type` does not recognise are skipped.
    """
    turns = [(turn, kind) for row in rows for turn in answer_turns(row)
             if (kind := question_type(turn.question)) is not None]
    replies = generate_replies(model, tokenizer, features,
                               [(turn.messages, turn.images) for turn, _ in turns],
                               max_new_tokens, batch_size)
    scores: dict[str, dict[str, float]] = {}
    for (turn, kind), reply in zip(turns, replies, strict=True):
        score = scores.setdefault(kind, {"correct": 0, "total": 0})
        score["total"] += 1
        score["correct"] += normalise_answer(reply) == normalise_answer(turn.reference)
    for kind, score in scores.items():
        score["accuracy"] = score["correct"] / score["total"]
        if answer_sets is not None and kind in answer_sets:
            score["chance"] = 1 / len(answer_sets[kind])
    return dict(sorted(scores.items()))


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
