"""Exact + near-duplicate removal: the planted-corpus generator's promises, pair precision and
recall of the default config on both MinHash backends, and the unit behaviour of the API.

Pairs, precisely: the predicted cluster of a doc is the kept doc it was matched to (itself if it
was kept); a predicted pair is an unordered pair of docs with the same predicted cluster, a true
pair one with the same planted cluster (each hard negative is a planted cluster of its own).
Precision = |predicted & true| / |predicted|, recall = |predicted & true| / |true|.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import pytest
from pydantic import ValidationError

from minimind.data.dedup import SIGNERS, DedupConfig, Deduplicator, dedup_key
from minimind.data.planted_dups import (
    make_planted_corpus,
    pair_precision_recall,
    predicted_clusters,
    shingle_set,
    similar_pairs,
    true_jaccard,
)

CLUSTERS, CLUSTER_SIZE, NEGATIVES = 240, 4, 120
BACKENDS = list(SIGNERS)
PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog near the river bank, while three children "
    "watch from the old stone bridge. Later that evening, the fox returns to its den beneath "
    "the oak tree and sleeps until the first light of morning reaches the quiet valley."
)
CHINESE_PARAGRAPH = (
    "一九九八年是全面贯彻落实党的十五大提出的任务的第一年，各条战线改革和发展的任务都十分繁重，"
    "有许多深层次的矛盾和问题有待克服和解决，特别是国有企业改革已经进入攻坚阶段。"
)


def fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[tuple[str, str]], dict[str, int]]:
    return make_planted_corpus(CLUSTERS, CLUSTER_SIZE, NEGATIVES, seed=7, lang="mixed")


def members_by_cluster(docs, cluster_of) -> dict[int, list[str]]:
    members = defaultdict(list)
    for doc_id, text in docs:
        members[cluster_of[doc_id]].append(text)
    return members


# -- the generator -------------------------------------------------------------------------------
def test_planted_clusters_are_tight_and_everything_else_is_far(corpus):
    docs, cluster_of = corpus
    members = members_by_cluster(docs, cluster_of)
    assert len(docs) == CLUSTERS * CLUSTER_SIZE + NEGATIVES
    assert sorted(len(members[c]) for c in range(CLUSTERS)) == [CLUSTER_SIZE] * CLUSTERS
    intra = [true_jaccard(a, b) for c in range(CLUSTERS)
             for a, b in itertools.combinations(members[c], 2)]
    assert min(intra) >= 0.8 and max(intra) <= 1.0
    assert np.mean(np.array(intra) < 1.0) > 0.3  # many variants are more than surface changes

    ids = [doc_id for doc_id, _ in docs]
    close = similar_pairs([text for _, text in docs], 0.5)
    cross = [(ids[i], ids[j]) for i, j in close if cluster_of[ids[i]] != cluster_of[ids[j]]]
    assert cross == []
    assert len(close) == len(intra)  # and every intra-cluster pair was found


def test_hard_negatives_share_much_surface(corpus):
    docs, cluster_of = corpus
    ids = [doc_id for doc_id, _ in docs]
    near_something = {ids[k] for pair in similar_pairs([t for _, t in docs], 0.25) for k in pair}
    negatives = [doc_id for doc_id in ids if cluster_of[doc_id] >= CLUSTERS]
    assert sum(doc_id in near_something for doc_id in negatives) >= 0.8 * len(negatives)


def test_corpus_mixes_languages_and_variant_kinds(corpus):
    docs, cluster_of = corpus
    texts = [text for _, text in docs]
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in texts)
    assert 0.35 * len(texts) < chinese < 0.65 * len(texts)
    assert any(any("\uff21" <= ch <= "\uff5a" for ch in text) for text in texts)  # full-width
    assert any(any(ch in "\n\t" for ch in text) for text in texts)
    members = members_by_cluster(docs, cluster_of)
    pairs = [pair for c in range(CLUSTERS) for pair in itertools.combinations(members[c], 2)]
    assert any(a == b for a, b in pairs)  # verbatim copies
    assert any(a != b and dedup_key(a) == dedup_key(b) for a, b in pairs)  # surface variants
    clusters_in_order = [cluster_of[doc_id] for doc_id, _ in docs]
    same_as_next = sum(a == b for a, b in itertools.pairwise(clusters_in_order))
    assert same_as_next < 0.05 * len(docs)  # shuffled, not grouped by cluster


def test_generator_is_deterministic_given_seed():
    first = make_planted_corpus(20, 3, 5, seed=3)
    assert make_planted_corpus(20, 3, 5, seed=3) == first
    assert make_planted_corpus(20, 3, 5, seed=4) != first


# -- quality on the planted corpus ---------------------------------------------------------------
def test_pair_precision_recall_counts_unordered_pairs():
    truth = {"a": 1, "b": 1, "c": 1, "d": 2}
    predicted = {"a": "a", "b": "a", "c": "c", "d": "a"}
    # predicted pairs ab, ad, bd; true pairs ab, ac, bc; both: ab
    assert pair_precision_recall(predicted, truth) == (1 / 3, 1 / 3)
    assert pair_precision_recall({k: k for k in truth}, truth) == (1.0, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_config_recovers_planted_clusters(corpus, backend):
    docs, cluster_of = corpus
    deduplicator = Deduplicator(DedupConfig(backend=backend))
    precision, recall = pair_precision_recall(predicted_clusters(deduplicator, docs), cluster_of)
    print(f"{backend}: pair precision {precision:.4f}, recall {recall:.4f}, {deduplicator.stats}")
    assert precision >= 0.98
    assert recall >= 0.95
    stats = deduplicator.stats
    assert stats["checked"] == len(docs)
    assert stats["kept"] + stats["exact_duplicates"] + stats["near_duplicates"] == len(docs)
    assert stats["exact_duplicates"] > 0 and stats["near_duplicates"] > 0


def test_exact_only_misses_most_planted_pairs(corpus):
    """The metric can fail: without near dedup, only verbatim/whitespace copies are found."""
    docs, cluster_of = corpus
    deduplicator = Deduplicator(DedupConfig(near=False))
    precision, recall = pair_precision_recall(predicted_clusters(deduplicator, docs), cluster_of)
    assert precision == 1.0
    assert recall < 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_signatures_estimate_true_jaccard(corpus, backend):
    docs, _ = corpus
    sign = SIGNERS[backend](128, 1)
    texts = [text for _, text in docs[:300]]
    similar = [(texts[i], texts[j]) for i, j in similar_pairs(texts, 0.3)]
    dissimilar = list(itertools.combinations(texts[:8], 2))
    assert len(similar) >= 20
    errors = [abs(np.mean(sign(shingle_set(a)) == sign(shingle_set(b))) - true_jaccard(a, b))
              for a, b in similar + dissimilar]
    assert max(errors) < 0.2
    assert np.mean(errors) < 0.05


# -- unit behaviour ------------------------------------------------------------------------------
def test_dedup_key_folds_surface_differences():
    assert dedup_key("Ｈｅｌｌｏ，\u3000ＷＯＲＬＤ！！") == "hello world"
    assert dedup_key("  Hello,\n\tworld...  ") == "hello world"
    assert dedup_key("你好，世界！") == dedup_key("你好世界") == "你好世界"
    assert dedup_key("１９９８年") == "1998年"
    assert dedup_key("") == dedup_key(" ?! ") == ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_duplicates_are_caught_with_first_id(backend):
    deduplicator = Deduplicator(DedupConfig(backend=backend))
    assert deduplicator.check("first", PARAGRAPH) is None
    assert deduplicator.check("copy", PARAGRAPH) == ("exact_duplicate", "first")
    rewrapped = "\n  " + PARAGRAPH.replace(" ", "\n", 5).replace(" ", "  \t", 3) + "\n"
    assert deduplicator.check("rewrapped", rewrapped) == ("exact_duplicate", "first")
    assert deduplicator.stats["exact_duplicates"] == 2


SURFACE_VARIANTS = {
    "upper case": PARAGRAPH.upper(),
    "title case": PARAGRAPH.title(),
    "no punctuation": PARAGRAPH.replace(",", "").replace(".", ""),
    "other punctuation": PARAGRAPH.replace(",", ";").replace(".", "!!"),
    "full-width": fullwidth(PARAGRAPH),
    "one word replaced": PARAGRAPH.replace("children", "teachers"),
    "two words dropped": PARAGRAPH.replace("old stone ", ""),
    "case, width and spacing": fullwidth(PARAGRAPH.lower()).replace(" ", "\u3000\n"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", SURFACE_VARIANTS)
def test_variants_are_near_duplicates(backend, variant):
    deduplicator = Deduplicator(DedupConfig(backend=backend))
    assert deduplicator.check("original", PARAGRAPH) is None
    assert deduplicator.check(variant, SURFACE_VARIANTS[variant]) == ("near_duplicate", "original")


@pytest.mark.parametrize("backend", BACKENDS)
def test_chinese_variants_are_near_duplicates(backend):
    deduplicator = Deduplicator(DedupConfig(backend=backend))
    assert deduplicator.check("zh", CHINESE_PARAGRAPH) is None
    swapped = CHINESE_PARAGRAPH.replace("，", ",").replace("。", "！")
    assert deduplicator.check("zh-punct", swapped) == ("near_duplicate", "zh")
    edited = CHINESE_PARAGRAPH.replace("十分繁重", "非常繁重")
    assert deduplicator.check("zh-edit", edited) == ("near_duplicate", "zh")


@pytest.mark.parametrize("backend", BACKENDS)
def test_distinct_documents_are_kept(corpus, backend):
    """One doc of every planted cluster, hard negatives included: nothing may be flagged."""
    docs, cluster_of = corpus
    one_per_cluster = {cluster_of[doc_id]: (doc_id, text) for doc_id, text in docs}
    deduplicator = Deduplicator(DedupConfig(backend=backend))
    flagged = [doc_id for doc_id, text in one_per_cluster.values()
               if deduplicator.check(doc_id, text) is not None]
    assert flagged == []
    assert deduplicator.stats["kept"] == CLUSTERS + NEGATIVES


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_and_empty_texts(backend):
    deduplicator = Deduplicator(DedupConfig(backend=backend))
    assert deduplicator.check("empty", "") is None
    assert deduplicator.check("empty-again", "") == ("exact_duplicate", "empty")
    assert deduplicator.check("only-punctuation", " ?! ") is None  # empty key: nothing to compare
    assert deduplicator.check("short", "ab") is None
    assert deduplicator.check("short-upper", "AB!") == ("near_duplicate", "short")
    assert deduplicator.check("other-short", "z") is None

    near_only = Deduplicator(DedupConfig(backend=backend, exact=False))
    assert near_only.check("a", "") is None
    assert near_only.check("b", "") is None
    assert near_only.check("c", "x") is None
    assert near_only.check("d", "X.") == ("near_duplicate", "c")


def test_both_switches_off_keeps_everything():
    deduplicator = Deduplicator(DedupConfig(exact=False, near=False))
    assert [deduplicator.check(str(i), PARAGRAPH) for i in range(3)] == [None] * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_decisions_are_deterministic_given_seed(corpus, backend):
    docs, _ = corpus
    sample = docs[:300]

    def decisions(seed: int) -> list:
        deduplicator = Deduplicator(DedupConfig(backend=backend, seed=seed))
        return [deduplicator.check(doc_id, text) for doc_id, text in sample]

    assert decisions(1) == decisions(1)
    shingles = shingle_set(PARAGRAPH)

    def signature(seed: int) -> list[int]:
        return SIGNERS[backend](64, seed)(shingles).tolist()

    assert signature(5) == signature(5)
    assert signature(5) != signature(6)


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bands": 16}, "both"),
        ({"rows": 8}, "both"),
        ({"bands": 20, "rows": 7}, "exceeds num_perm"),
        ({"num_perm": 64, "bands": 16, "rows": 8}, "exceeds num_perm"),
        ({"bands": 1, "rows": 8}, "greater than or equal to 2"),
        ({"threshold": 1.0}, "less than 1"),
        ({"num_perm": 8}, "greater than or equal to 16"),
        ({"backend": "faiss"}, "datasketch"),
        ({"shingle": 5}, "Extra inputs"),
    ],
)
def test_invalid_configs_are_rejected(overrides, message):
    with pytest.raises(ValidationError, match=message):
        DedupConfig(**overrides)


def test_explicit_bands_and_rows_are_used():
    config = DedupConfig(bands=16, rows=8)
    assert config.lsh_params() == (16, 8)
    deduplicator = Deduplicator(config)
    assert deduplicator.check("original", PARAGRAPH) is None
    assert deduplicator.check("upper", PARAGRAPH.upper()) == ("near_duplicate", "original")


def test_default_lsh_bands_favour_recall():
    """Every candidate is verified, so bands x rows must miss almost no pair at Jaccard 0.8."""
    config = DedupConfig()
    bands, rows = config.lsh_params()
    assert bands * rows <= config.num_perm
    assert 1 - (1 - 0.8**rows) ** bands > 0.99
    assert 1 - (1 - 0.3**rows) ** bands < 0.05  # dissimilar pairs rarely even become candidates
