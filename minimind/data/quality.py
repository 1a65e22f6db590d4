"""Document quality filters for pretraining text, in the style of Gopher and C4.

A tiny model learns whatever it is fed, and web-scale text is full of navigation menus,
keyword lists, repeated lines, lorem ipsum and mojibake. The heuristics below are the
well-tested ones from the Gopher paper (Rae et al., 2021: word counts, word lengths,
symbol ratios, stop words, line and n-gram repetition) and C4 (Raffel et al., 2020:
boilerplate phrases), adapted to Chinese: in CJK text each Han or kana character counts
as a word, and the rules that assume space-separated words (mean word length, alphabetic
words, English stop words) apply only to non-Chinese text.

`quality_issue` returns the first failing rule as `(rule_name, detail)`; rule names are
snake_case codes counted in the clean report, details carry the measured value and the
threshold. Every threshold lives in `QualityConfig` (the `clean.quality` section of
params.yaml) and every rule can be switched off with `null` (or an empty mapping/list).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from minimind.data.textnorm import HAN_RANGES, KANA_RANGES

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NgramThresholds = dict[Annotated[int, Field(ge=1, le=20)], Fraction]

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "◦", "▪", "■", "□", "‣", "⁃", "-", "*", "·", "➢", "➤", "►", "✓", "✔")
DEFAULT_BOILERPLATE = (
    "lorem ipsum",
    "javascript must be enabled",
    "enable javascript",
    "javascript is disabled",
    "cookie policy",
    "we use cookies",
)


class QualityConfig(BaseModel):
    """Thresholds of the document quality rules; `None` switches a rule off."""

    model_config = ConfigDict(extra="forbid")

    min_words: int | None = Field(
        8, ge=1,
        description="Fewest words a document may have, each CJK character counting as one "
        "(Gopher: 50; lower here so that short reviews and verse passages pass).",
    )
    max_words: int | None = Field(
        100_000, ge=1, description="Most words a document may have (Gopher: 100k)."
    )
    min_mean_word_length: float | None = Field(
        3.0, ge=0.0, description="Shortest mean word length in characters (non-Chinese text)."
    )
    max_mean_word_length: float | None = Field(
        10.0, ge=0.0, description="Longest mean word length in characters (non-Chinese text)."
    )
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0.0,
        description="Most '#' plus ellipses ('...', '…' runs) per word; catches tag and "
        "keyword lists and truncated snippets (Gopher: 0.1).",
    )
    min_lines_for_line_rules: int = Field(
        3, ge=1,
        description="The bullet- and ellipsis-line rules apply only to documents with at least "
        "this many lines: a one-line review trailing off with '……' is normal prose.",
    )
    max_bullet_lines_frac: Fraction | None = Field(
        0.9, description="Largest share of lines that may start with a bullet (Gopher: 0.9)."
    )
    max_ellipsis_lines_frac: Fraction | None = Field(
        0.3, description="Largest share of lines that may end with an ellipsis (Gopher: 0.3)."
    )
    min_alpha_words_frac: Fraction | None = Field(
        0.8,
        description="Smallest share of words holding a letter (non-Chinese text; Gopher: 0.8); "
        "catches number tables and symbol soup.",
    )
    min_stop_words: int | None = Field(
        2, ge=0,
        description="Fewest English stop words (the, be, to, of, and, that, have, with) in "
        "English text (Gopher: 2); catches word salad and keyword lists.",
    )
    max_dup_line_chars_frac: Fraction | None = Field(
        0.2,
        description="Largest share of line characters in lines that repeat an earlier line "
        "(Gopher: 0.2).",
    )
    max_dup_paragraphs_frac: Fraction | None = Field(
        0.3,
        description="Largest share of paragraphs (blank-line separated) that repeat an earlier "
        "one (Gopher: 0.3).",
    )
    max_top_ngram_chars_frac: NgramThresholds = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> largest share of word characters covered by the most frequent "
        "n-gram (Gopher); empty to switch off.",
    )
    max_dup_ngram_chars_frac: NgramThresholds = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> largest share of word characters inside repeated n-grams (Gopher); "
        "empty to switch off.",
    )
    cjk_chars_per_word: int = Field(
        2, ge=1,
        description="In Chinese text the n-gram rules look at n x this many characters: a "
        "Chinese word averages about two characters, and single-character n-grams repeat "
        "far more often than word n-grams.",
    )
    boilerplate_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BOILERPLATE),
        description="Case-insensitive phrases that mark page boilerplate (C4); a document "
        "containing one is dropped. Empty to switch off.",
    )
    max_bad_chars_frac: Fraction | None = Field(
        0.01,
        description="Largest share of replacement (U+FFFD), control and private-use "
        "characters, the marks of broken decoding.",
    )

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> Self:
        for low, high in (
            ("min_words", "max_words"),
            ("min_mean_word_length", "max_mean_word_length"),
        ):
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and low_value > high_value:
                raise ValueError(f"{low} ({low_value}) is larger than {high} ({high_value})")
        return self


# --- document statistics -----------------------------------------------------------------

_CJK_CHAR = f"[{HAN_RANGES}{KANA_RANGES}]"
_WORD_CHARS = f"[^\\W_{HAN_RANGES}{KANA_RANGES}]+"
# A word of a spaced script: letters and digits, joined across apostrophes ("don't") and
# across the separators inside numbers ("1,500", "3.14").
_SPACED_WORD = f"{_WORD_CHARS}(?:(?:['’]|(?<=\\d)[.,](?=\\d)){_WORD_CHARS})*"
_WORD = re.compile(_SPACED_WORD)
_TOKEN = re.compile(f"{_CJK_CHAR}|{_SPACED_WORD}")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_ELLIPSIS = re.compile(r"\.{3,}|…+")
_LINE_END_ELLIPSIS = re.compile(r"(?:\.{3}|…)$")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_BAD_CHAR = re.compile("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff]")


@dataclass(frozen=True)
class _Doc:
    """What the rules measure, computed once per document."""

    text: str
    lines: list[str]  # non-blank lines, stripped
    tokens: list[str]  # words in reading order; each CJK character is one token
    spaced_words: list[str]  # the tokens that are not CJK characters
    token_chars: int  # characters in all tokens together

    @classmethod
    def of(cls, text: str) -> _Doc:
        lines = [line.strip() for line in text.splitlines()]
        tokens = _TOKEN.findall(text)
        return cls(
            text=text,
            lines=[line for line in lines if line],
            tokens=tokens,
            spaced_words=_WORD.findall(text),
            token_chars=sum(map(len, tokens)),
        )


def quality_issue(text: str, lang: str, config: QualityConfig) -> tuple[str, str] | None:
    """(rule_name, detail) for the first rule that `text` fails, or None when it passes.

    `lang` is `detect_lang(text)`: "zh" skips the rules built on space-separated words,
    and the stop-word rule applies to "en" only.
    """
    doc = _Doc.of(text)
    for name, rule in _RULES:
        detail = rule(doc, lang, config)
        if detail is not None:
            return name, detail
    return None


def _too_big(what: str, value: float, limit: float | None) -> str | None:
    return f"{what} {value:.3g} > max {limit:g}" if limit is not None and value > limit else None


def _too_small(what: str, value: float, limit: float | None) -> str | None:
    return f"{what} {value:.3g} < min {limit:g}" if limit is not None and value < limit else None


def _fraction(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


# --- the rules: (doc, lang, config) -> detail of the failure, or None ---------------------


def _bad_chars(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    share = _fraction(len(_BAD_CHAR.findall(doc.text)), len(doc.text))
    return _too_big("replacement/control character share", share, config.max_bad_chars_frac)


def _boilerplate(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    lowered = doc.text.lower()
    found = next((p for p in config.boilerplate_phrases if p.lower() in lowered), None)
    return None if found is None else f"contains boilerplate phrase {found!r}"


def _too_few_words(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    return _too_small("word count", len(doc.tokens), config.min_words)


def _too_many_words(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    return _too_big("word count", len(doc.tokens), config.max_words)


def _mean_word_length(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    if lang == "zh" or not doc.spaced_words:
        return None
    mean = sum(map(len, doc.spaced_words)) / len(doc.spaced_words)
    return _too_small("mean word length", mean, config.min_mean_word_length) or _too_big(
        "mean word length", mean, config.max_mean_word_length
    )


def _symbol_ratio(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    symbols = doc.text.count("#") + len(_ELLIPSIS.findall(doc.text))
    ratio = _fraction(symbols, len(doc.tokens))
    return _too_big("'#'/ellipsis per word", ratio, config.max_symbol_word_ratio)


def _bullet_lines(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    if len(doc.lines) < config.min_lines_for_line_rules:
        return None
    bullets = sum(line.startswith(BULLETS) for line in doc.lines)
    share = _fraction(bullets, len(doc.lines))
    return _too_big("share of lines starting with a bullet", share, config.max_bullet_lines_frac)


def _ellipsis_lines(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    if len(doc.lines) < config.min_lines_for_line_rules:
        return None
    trailing = sum(bool(_LINE_END_ELLIPSIS.search(line)) for line in doc.lines)
    share = _fraction(trailing, len(doc.lines))
    return _too_big("share of lines ending in an ellipsis", share, config.max_ellipsis_lines_frac)


def _alpha_words(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    if lang == "zh" or not doc.spaced_words:
        return None
    with_letter = sum(bool(_HAS_LETTER.search(word)) for word in doc.spaced_words)
    share = with_letter / len(doc.spaced_words)
    return _too_small("share of words with a letter", share, config.min_alpha_words_frac)


def _stop_words(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    if lang != "en":
        return None
    count = sum(word.lower() in STOP_WORDS for word in doc.spaced_words)
    return _too_small("English stop-word count", count, config.min_stop_words)


def _dup_line_chars(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    share = _repeated_chars_share(doc.lines)
    return _too_big("share of characters in repeated lines", share, config.max_dup_line_chars_frac)


def _dup_paragraphs(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(doc.text) if p.strip()]
    repeats = len(paragraphs) - len(set(paragraphs))
    share = _fraction(repeats, len(paragraphs))
    return _too_big("share of repeated paragraphs", share, config.max_dup_paragraphs_frac)


def _ngram_sizes(
    thresholds: dict[int, float], lang: str, config: QualityConfig
) -> list[tuple[int, int, float]]:
    """(n in tokens, n as configured, limit), scaled up for Chinese character tokens."""
    scale = config.cjk_chars_per_word if lang == "zh" else 1
    return [(n * scale, n, limit) for n, limit in sorted(thresholds.items())]


def _top_ngram(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    total = doc.token_chars
    for n, n_words, limit in _ngram_sizes(config.max_top_ngram_chars_frac, lang, config):
        counts = Counter(zip(*(doc.tokens[i:] for i in range(n)), strict=False))
        if not counts:
            continue
        gram, count = counts.most_common(1)[0]
        if count < 2:
            continue
        share = min(1.0, _fraction(count * sum(map(len, gram)), total))
        failure = _too_big(f"share of characters in the top {n_words}-gram", share, limit)
        if failure:
            return f"{failure} ({' '.join(gram)!r} x{count})"
    return None


def _dup_ngrams(doc: _Doc, lang: str, config: QualityConfig) -> str | None:
    total = doc.token_chars
    for n, n_words, limit in _ngram_sizes(config.max_dup_ngram_chars_frac, lang, config):
        share = _fraction(_chars_in_repeated_ngrams(doc.tokens, n), total)
        if share == 0.0:
            return None  # no repeated n-gram means no repeated longer n-gram either
        failure = _too_big(f"share of characters in repeated {n_words}-grams", share, limit)
        if failure:
            return failure
    return None


def _repeated_chars_share(items: list[str]) -> float:
    seen: set[str] = set()
    repeated = 0
    for item in items:
        if item in seen:
            repeated += len(item)
        seen.add(item)
    return _fraction(repeated, sum(map(len, items)))


def _chars_in_repeated_ngrams(tokens: list[str], n: int) -> int:
    """Characters of the tokens covered by a second (or later) occurrence of an n-gram."""
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(tokens)
    for start in range(len(tokens) - n + 1):
        gram = tuple(tokens[start : start + n])
        if gram in seen:
            covered[start : start + n] = [True] * n
        else:
            seen.add(gram)
    return sum(len(token) for token, hit in zip(tokens, covered, strict=True) if hit)


_RULES: tuple[tuple[str, Callable[[_Doc, str, QualityConfig], str | None]], ...] = (
    ("bad_chars", _bad_chars),
    ("boilerplate", _boilerplate),
    ("too_few_words", _too_few_words),
    ("too_many_words", _too_many_words),
    ("mean_word_length", _mean_word_length),
    ("symbol_ratio", _symbol_ratio),
    ("bullet_lines", _bullet_lines),
    ("ellipsis_lines", _ellipsis_lines),
    ("alpha_words", _alpha_words),
    ("stop_words", _stop_words),
    ("dup_line_chars", _dup_line_chars),
    ("dup_paragraphs", _dup_paragraphs),
    ("top_ngram", _top_ngram),
    ("dup_ngrams", _dup_ngrams),
)
