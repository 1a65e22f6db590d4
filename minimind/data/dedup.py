"""Exact and near-duplicate removal for records streamed one at a time.

Why: repeated documents waste training compute and push a small model towards memorising them.
Most duplication in scraped text is not byte-identical: the same paragraph re-posted with other
whitespace, case, punctuation, full-width characters or a few edited words. So two checks run:

- exact: a 128-bit xxh3 hash of the whitespace-normalised text, looked up in a dict;
- near: a MinHash signature over character n-grams of `dedup_key(text)` (character shingles
  need no word splitting, so Chinese and English are handled alike). A datasketch `MinHashLSH`
  index proposes kept documents that probably share enough shingles; each candidate is then
  verified by the Jaccard similarity estimated from its stored signature, which keeps precision
  high even though the LSH bands are tuned to miss as little as possible.

Only kept documents enter the indexes, and per kept document only what the indexes need is held
(a hash, a signature row of `num_perm` uint32 values, its LSH band keys and its id), never text.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Collection
from functools import cache
from typing import TYPE_CHECKING, Literal

import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from datasketch import LeanMinHash

# Candidates from LSH are all verified, so a missed duplicate costs more than a spurious
# candidate: weight false negatives 9:1 when deriving bands x rows from the threshold.
LSH_FALSE_POSITIVE_WEIGHT, LSH_FALSE_NEGATIVE_WEIGHT = 0.1, 0.9

# Both backends yield uint32 minima; the label only has to be the same for every signature
# that meets in one LSH index (datasketch refuses to mix schemes).
SIGNATURE_SCHEME = "affine32"


class DedupConfig(BaseModel):
    """How duplicates are found; embedded in params.yaml as `clean.dedup`."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Drop records whose whitespace-normalised text was seen.")
    near: bool = Field(True, description="Drop records whose shingle Jaccard to a kept record, "
                                         "estimated by MinHash, reaches `threshold`.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations: more gives "
                          "tighter Jaccard estimates and costs 4 bytes each per kept record.")
    threshold: float = Field(0.7, gt=0.0, lt=1.0, description="Jaccard similarity of character "
                             "shingles at which a record counts as a near duplicate.")
    bands: int | None = Field(None, ge=2, description="LSH bands; with `rows`, overrides the "
                              "bands x rows that would be derived from `threshold`.")
    rows: int | None = Field(None, ge=1, description="MinHash values per LSH band; set together "
                             "with `bands`, bands * rows <= num_perm.")
    shingle_size: int = Field(5, ge=1, le=32, description="Characters per shingle (n-gram) of "
                              "the dedup key.")
    backend: Literal["datasketch", "rensa"] = Field("rensa", description="MinHash "
                                                    "implementation; rensa is faster, equally "
                                                    "accurate (bench/dedup.py).")
    seed: int = Field(1, ge=0, lt=2**32, description="Seed of the MinHash permutations.")

    @model_validator(mode="after")
    def _check_lsh_params(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both `bands` and `rows`, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands} * {self.rows} = "
                             f"{self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows) of the LSH index: the configured pair, or one derived from threshold."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return _derived_lsh_params(self.threshold, self.num_perm)


class _PunctuationDeleter(dict):
    """`str.translate` table that deletes Unicode punctuation (categories P*).

    Filled lazily, one entry per code point ever seen, so no import-time scan of Unicode.
    """

    def __missing__(self, codepoint: int) -> int | None:
        is_punctuation = unicodedata.category(chr(codepoint)).startswith("P")
        self[codepoint] = None if is_punctuation else codepoint
        return self[codepoint]


_DELETE_PUNCTUATION = _PunctuationDeleter()


def dedup_key(text: str) -> str:
    """Text reduced for near-duplicate comparison.

    NFKC folds full-width and other compatibility forms, casefold removes case, punctuation is
    deleted and whitespace runs become one space, so variants that differ only in those respects
    get the same key.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.translate(_DELETE_PUNCTUATION).split())


def char_shingles(key: str, size: int) -> set[str]:
    """The set of overlapping `size`-character substrings of `key`.

    A non-empty key shorter than `size` is its own single shingle; an empty key has none.
    """
    if len(key) <= size:
        return {key} if key else set()
    return {key[start:start + size] for start in range(len(key) - size + 1)}


def exact_fingerprint(text: str) -> int:
    """128-bit hash of the text with whitespace runs collapsed (case and punctuation kept)."""
    return xxhash.xxh3_128_intdigest(" ".join(text.split()).encode())


Signer = Callable[[Collection[str]], np.ndarray]


def _hash_shingle(shingle: str) -> int:
    return xxhash.xxh32_intdigest(shingle.encode())


def _datasketch_signer(num_perm: int, seed: int) -> Signer:
    """datasketch MinHash: numpy over the shingles' 32-bit xxhashes, one Python call each."""
    from datasketch import MinHash

    # Generating permutations is the costly part of a MinHash; draw them once and share them.
    template = MinHash(num_perm, seed=seed, hashfunc=_hash_shingle, scheme=SIGNATURE_SCHEME)

    def sign(shingles: Collection[str]) -> np.ndarray:
        sketch = MinHash(num_perm, seed=seed, hashfunc=_hash_shingle, scheme=SIGNATURE_SCHEME,
                         permutations=template.permutations)
        sketch.update_batch(shingles)
        return sketch.hashvalues

    return sign


def _rensa_signer(num_perm: int, seed: int) -> Signer:
    """rensa RMinHash: hashing and minima in Rust; its digest is uint32 like datasketch's."""
    from rensa import RMinHash

    def sign(shingles: Collection[str]) -> np.ndarray:
        sketch = RMinHash(num_perm, seed)
        sketch.update(list(shingles))
        return np.asarray(sketch.digest(), dtype=np.uint32)

    return sign


SIGNERS: dict[str, Callable[[int, int], Signer]] = {
    "datasketch": _datasketch_signer,
    "rensa": _rensa_signer,
}


@cache
def _derived_lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """The (bands, rows) datasketch picks for a threshold and our error weights.

    Picking integrates error probabilities for every split of num_perm (~10 ms), hence the cache.
    """
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold, num_perm,
                     weights=(LSH_FALSE_POSITIVE_WEIGHT, LSH_FALSE_NEGATIVE_WEIGHT))
    return lsh.b, lsh.r


class _SignatureStore:
    """Kept documents' signatures as rows of one growing uint32 matrix, plus their ids."""

    def __init__(self, num_perm: int, capacity: int = 256):
        self._rows = np.empty((capacity, num_perm), dtype=np.uint32)
        self.doc_ids: list[str] = []

    def add(self, doc_id: str, signature: np.ndarray) -> int:
        row = len(self.doc_ids)
        if row == len(self._rows):
            self._rows = np.concatenate([self._rows, np.empty_like(self._rows)])
        self._rows[row] = signature
        self.doc_ids.append(doc_id)
        return row

    def similarities(self, rows: list[int], signature: np.ndarray) -> np.ndarray:
        """Estimated Jaccard of `signature` to each stored row: the share of equal minima."""
        return (self._rows[rows] == signature).mean(axis=1)


class Deduplicator:
    """Remembers kept documents and tells whether a new one duplicates one of them."""

    def __init__(self, config: DedupConfig):
        from datasketch import MinHashLSH

        self.config = config
        self._sign = SIGNERS[config.backend](config.num_perm, config.seed)
        self._lsh = MinHashLSH(num_perm=config.num_perm, params=config.lsh_params())
        self._first_id_by_fingerprint: dict[int, str] = {}
        self._signatures = _SignatureStore(config.num_perm)
        self._stats: Counter[str] = Counter()

    def check(self, doc_id: str, text: str) -> tuple[str, str] | None:
        """None if the text is new (it is now remembered as kept); otherwise
        (reason, id of the earlier kept doc), reason "exact_duplicate" or "near_duplicate"."""
        self._stats["checked"] += 1
        fingerprint = exact_fingerprint(text) if self.config.exact else None
        if fingerprint in self._first_id_by_fingerprint:
            return self._duplicate("exact_duplicate", self._first_id_by_fingerprint[fingerprint])
        sketch = self._sketch(text) if self.config.near else None
        if sketch is not None and (earlier := self._most_similar_kept(sketch)) is not None:
            return self._duplicate("near_duplicate", earlier)
        self._keep(doc_id, fingerprint, sketch)
        return None

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: checked, kept, exact_duplicates, near_duplicates, candidates_verified."""
        names = ("checked", "kept", "exact_duplicates", "near_duplicates", "candidates_verified")
        return {name: self._stats[name] for name in names}

    def _sketch(self, text: str) -> LeanMinHash | None:
        """MinHash of the text's shingles; None when its key is empty (nothing to compare)."""
        from datasketch import LeanMinHash

        shingles = char_shingles(dedup_key(text), self.config.shingle_size)
        if not shingles:
            return None
        return LeanMinHash(seed=self.config.seed, hashvalues=self._sign(shingles),
                           scheme=SIGNATURE_SCHEME)

    def _most_similar_kept(self, sketch: LeanMinHash) -> str | None:
        """Id of the LSH candidate with the highest estimated Jaccard, if it reaches threshold."""
        rows = sorted(self._lsh.query(sketch))
        if not rows:
            return None
        self._stats["candidates_verified"] += len(rows)
        similarities = self._signatures.similarities(rows, sketch.hashvalues)
        best = int(np.argmax(similarities))
        if similarities[best] < self.config.threshold:
            return None
        return self._signatures.doc_ids[rows[best]]

    def _keep(self, doc_id: str, fingerprint: int | None, sketch: LeanMinHash | None) -> None:
        self._stats["kept"] += 1
        if fingerprint is not None:
            self._first_id_by_fingerprint[fingerprint] = doc_id
        if sketch is not None:
            row = self._signatures.add(doc_id, sketch.hashvalues)
            self._lsh.insert(row, sketch, check_duplication=False)

    def _duplicate(self, reason: str, earlier_id: str) -> tuple[str, str]:
        self._stats[f"{reason}s"] += 1
        return reason, earlier_id
