"""Multi-turn chit-chat from chatterbot-corpus (BSD licence), English and Simplified Chinese.

The package's `data/<language>/*.yml` files each hold a list of conversations, a conversation
being the utterances of two speakers taking turns. The first speaker becomes the user and the
second the assistant; a conversation whose last utterance is the user's drops that utterance so
every record ends with an assistant answer. Conversations come in a seeded random order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import yaml

from minimind.data.builtin.common import message, package_file, shuffled, take

LANGUAGES = ("english", "chinese")

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def corpus_files() -> list[Path]:
    """The YAML files of the chosen languages, sorted by language then file name."""
    data = package_file("chatterbot_corpus", "data", install_hint="pip install chatterbot-corpus")
    return [path for language in LANGUAGES for path in sorted((data / language).glob("*.yml"))]


def as_conversation(utterances: list) -> list[dict] | None:
    """Alternating user/assistant messages, ending on the assistant; None if nothing is left."""
    turns = [str(u).strip() for u in utterances if u is not None and str(u).strip()]
    turns = turns[: len(turns) - len(turns) % 2]
    if not turns:
        return None
    roles = ("user", "assistant")
    return [message(roles[i % 2], text) for i, text in enumerate(turns)]


def read_conversations(path: Path) -> Iterator[list[dict]]:
    """The usable conversations of one corpus file."""
    with path.open(encoding="utf-8") as f:
        document = yaml.load(f, Loader=_Loader) or {}
    for utterances in document.get("conversations") or []:
        conversation = as_conversation(utterances)
        if conversation:
            yield conversation


def build_dialogues(limit: int | None, seed: int) -> Iterator[dict]:
    """Every chatterbot conversation (en + zh) as an SFT record, in seeded random order."""
    conversations = [c for path in corpus_files() for c in read_conversations(path)]
    records = ({"conversations": c} for c in shuffled(conversations, random.Random(seed)))
    yield from take(records, limit)
