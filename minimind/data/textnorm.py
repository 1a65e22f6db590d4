"""Text normalisation and a cheap language guess for the clean stage.

The same sentence reaches us in many byte forms: full-width letters and digits from
Chinese sources (`Ｈｅｌｌｏ１２３`), CRLF files from Windows, zero-width spaces and BOMs
from web pages, stray control characters from broken converters. Left alone they split
the tokenizer's vocabulary, defeat exact dedup and teach the model invisible junk, so
every text field is normalised once, before filtering and dedup.

`detect_lang` tells the quality filters which rule set applies (CJK text has no spaces,
so "words" mean characters there).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from minimind.data.records import Kind, validate_record

NormalForm = Literal["NFKC", "NFC", "none"]
Lang = Literal["zh", "en", "other"]

# Every line break becomes "\n": CRLF, lone CR, vertical tab, form feed, NEL, and the
# Unicode line / paragraph separators.
_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
# Removed outright: C0/C1 control characters except "\n" and "\t", lone UTF-16 surrogates
# (they cannot be written as UTF-8), soft hyphens, zero-width space, word joiner and BOM.
# Zero-width (non-)joiners stay: emoji sequences and several scripts need them.
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ud800-\udfff\u00ad\u200b\u2060\ufeff]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+(?=\n)")

# Character-class ranges (for use inside [...]) of the scripts written without spaces,
# where each character counts as a word.
HAN_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
KANA_RANGES = "\u3040-\u30ff\u31f0-\u31ff"
_LATIN_RANGES = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"

_HAN = re.compile(f"[{HAN_RANGES}]")
_KANA = re.compile(f"[{KANA_RANGES}]")
_LATIN_WORD = re.compile(f"[{_LATIN_RANGES}]+")
# Runs of letters from any other script (Cyrillic, Greek, Arabic, Hangul, ...).
_OTHER_WORD = re.compile(f"[^\\W\\d_{_LATIN_RANGES}{KANA_RANGES}{HAN_RANGES}]+")

_TEXT_FIELDS = ("content", "reasoning_content")  # tools / tool_calls are JSON: left as they are


def normalize_text(text: str, form: NormalForm = "NFKC") -> str:
    """Return `text` in one canonical form.

    Steps: every line break becomes LF; control characters (except LF and tab), lone
    surrogates, soft hyphens, zero-width spaces, word joiners and BOMs are removed; Unicode
    normalisation `form` is applied (NFKC also folds full-width ASCII and compatibility
    characters such as `…` into their plain forms, which includes Chinese full-width
    punctuation: `，！？` become `,!?`; choose NFC to keep it); trailing whitespace on each
    line and whitespace around the whole text are stripped.
    """
    text = _LINE_BREAKS.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    if form != "none":
        text = unicodedata.normalize(form, text)
    return _TRAILING_SPACE.sub("", text).strip()


def normalize_record(kind: Kind, record: dict, form: NormalForm = "NFKC") -> dict:
    """Normalise the text fields of a canonical record (from `validate_record`).

    Applies `normalize_text` to pretrain `text`, to each message's `content` and
    `reasoning_content` and to a vlm/omni record's `answer_choices` (they must still hold the
    normalised answers); `tools`, `tool_calls` and media fields are left untouched. The
    result is validated again, so a record whose text was only invisible characters raises
    SchemaError (`empty_text`, `no_assistant_turn`, ...) instead of slipping through empty.
    """
    normalized = dict(record)
    if kind == "pretrain":
        normalized["text"] = normalize_text(record["text"], form)
    else:
        message_fields = ("chosen", "rejected") if kind == "dpo" else ("conversations",)
        for field in message_fields:
            normalized[field] = [_normalize_message(m, form) for m in record[field]]
        if record.get("answer_choices") is not None:  # compared with the normalised answers
            normalized["answer_choices"] = [
                None if options is None else [normalize_text(o, form) for o in options]
                for options in record["answer_choices"]]
    return validate_record(kind, normalized)


def _normalize_message(message: dict, form: NormalForm) -> dict:
    return {
        key: normalize_text(value, form) if key in _TEXT_FIELDS else value
        for key, value in message.items()
    }


def detect_lang(text: str) -> Lang:
    """Guess whether `text` is mainly Chinese, English (Latin script) or something else.

    Counts Han characters against Latin words (a Han character carries about as much as
    a word) and words of other scripts; the largest count wins, Chinese on ties. Text with
    kana is Japanese, hence "other". "en" stands for any Latin-script text: the English
    stop-word filter then weeds out other Latin-script languages.
    """
    han = len(_HAN.findall(text))
    kana = len(_KANA.findall(text))
    if kana > 0.1 * (han + kana):
        return "other"
    latin_words = len(_LATIN_WORD.findall(text))
    other_words = len(_OTHER_WORD.findall(text))
    if han == latin_words == other_words == 0:
        return "other"
    if han >= max(latin_words, other_words):
        return "zh"
    return "en" if latin_words >= other_words else "other"
