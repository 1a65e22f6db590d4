"""Dedup throughput (docs/s) and quality (pair precision/recall) per MinHash backend.

Every backend streams the same planted corpus (minimind/data/planted_dups.py) through a
Deduplicator with the default config, so the figures differ only by backend; they decide
DedupConfig.backend. A "key + shingles" row times the backend-independent part alone.

    python bench/dedup.py                        # ~3k docs, English and Chinese
    python bench/dedup.py --clusters 200 --repeats 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from minimind.data.dedup import SIGNERS, DedupConfig, Deduplicator, char_shingles, dedup_key
from minimind.data.planted_dups import (
    make_planted_corpus,
    pair_precision_recall,
    predicted_clusters,
)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` timed runs (the least disturbed by other load)."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=700, help="planted clusters")
    parser.add_argument("--cluster-size", type=int, default=4, help="docs per cluster")
    parser.add_argument("--negatives", type=int, default=300, help="hard negatives")
    parser.add_argument("--lang", choices=("en", "zh", "mixed"), default="mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is shown")
    args = parser.parse_args()

    start = time.perf_counter()
    docs, cluster_of = make_planted_corpus(args.clusters, args.cluster_size, args.negatives,
                                           args.seed, lang=args.lang)
    print(f"corpus: {len(docs)} docs, {sum(len(text) for _, text in docs)} chars, "
          f"lang={args.lang}, generated in {time.perf_counter() - start:.1f} s")

    default = DedupConfig()
    shingling = best_seconds(
        lambda: [char_shingles(dedup_key(text), default.shingle_size) for _, text in docs],
        args.repeats)
    print(f"{'backend':<16}{'docs/s':>10}{'precision':>11}{'recall':>8}"
          f"{'kept':>7}{'exact':>7}{'near':>7}{'verified':>10}")
    print(f"{'key + shingles':<16}{len(docs) / shingling:>10.0f}")
    for backend in SIGNERS:
        config = default.model_copy(update={"backend": backend})
        seconds = best_seconds(lambda config=config: predicted_clusters(Deduplicator(config), docs),
                               args.repeats)
        deduplicator = Deduplicator(config)
        precision, recall = pair_precision_recall(predicted_clusters(deduplicator, docs),
                                                  cluster_of)
        stats = deduplicator.stats
        marker = " (default)" if backend == default.backend else ""
        print(f"{backend:<16}{len(docs) / seconds:>10.0f}{precision:>11.4f}{recall:>8.4f}"
              f"{stats['kept']:>7}{stats['exact_duplicates']:>7}{stats['near_duplicates']:>7}"
              f"{stats['candidates_verified']:>10}{marker}")


if __name__ == "__main__":
    main()
