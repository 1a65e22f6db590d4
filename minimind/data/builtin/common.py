"""Helpers shared by the builtin corpora: finding package data, limiting, packing, messages.

The corpora ship inside ordinary PyPI packages, so their files are located through the import
system (`importlib.util.find_spec`) without importing the packages themselves: several of them
run heavy or broken code on import, while their data files are plain text, JSON or YAML.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# System prompts mixed into a share of the SFT and DPO conversations so that a model sees both
# conversations with and without one (MiniMind's own SFT data does the same).
SYSTEM_PROMPTS_EN = (
    "You are a helpful assistant.",
    "You are a knowledgeable assistant. Answer briefly and accurately.",
    "You are MiniMind, a small but helpful AI assistant.",
)
SYSTEM_PROMPTS_ZH = (
    "你是一个乐于助人的助手。",
    "你是 MiniMind，一个小巧但有用的人工智能助手。",
    "请简洁、准确地回答用户的问题。",
)


def package_file(package: str, *parts: str, install_hint: str = "") -> Path:
    """Path of a data file inside an installed package, without importing the package.

    Raises FileNotFoundError naming the package (and how to install it) when it is missing, so a
    `builtin:` source fails with a fixable message instead of an ImportError deep in a stage.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = f" ({install_hint})" if install_hint else ""
        raise FileNotFoundError(f"package {package!r} is not installed{hint}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
    return path


def take(records: Iterable[T], limit: int | None) -> Iterator[T]:
    """At most `limit` records (all of them when limit is None), pulled lazily."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    return itertools.islice(records, limit)


def shuffled(items: Iterable[T], rng: random.Random) -> list[T]:
    """A new list with the items in a seeded random order."""
    result = list(items)
    rng.shuffle(result)
    return result


def pack(blocks: Iterable[str], max_chars: int, sep: str) -> Iterator[str]:
    """Greedily join consecutive blocks into documents of at most `max_chars` characters.

    Blocks keep their order and are never cut, so a block longer than `max_chars` becomes a
    document of its own; callers split such blocks first when the bound matters.
    """
    chunk: list[str] = []
    size = 0
    for block in blocks:
        if chunk and size + len(sep) + len(block) > max_chars:
            yield sep.join(chunk)
            chunk, size = [], 0
        size += len(block) + (len(sep) if chunk else 0)
        chunk.append(block)
    if chunk:
        yield sep.join(chunk)


def interleave(streams: Sequence[Iterator[T]], weights: Sequence[float],
               rng: random.Random) -> Iterator[T]:
    """Mix streams by drawing the next stream at random with the given weights.

    An exhausted stream drops out and the others go on, so every record of every stream is
    yielded exactly once and the mix is reproducible for a given rng.
    """
    live = list(zip(streams, weights, strict=True))
    while live:
        index = rng.choices(range(len(live)), weights=[w for _, w in live])[0]
        try:
            yield next(live[index][0])
        except StopIteration:
            del live[index]


def message(role: str, content: str, **extra: str) -> dict[str, Any]:
    """One chat message in MiniMind's schema (`tools`/`tool_calls` are JSON strings)."""
    return {"role": role, "content": content, **extra}


def maybe_system(rng: random.Random, prompts: Sequence[str], share: float) -> list[dict]:
    """A system message drawn from `prompts` with probability `share`, else nothing."""
    return [message("system", rng.choice(prompts))] if rng.random() < share else []
