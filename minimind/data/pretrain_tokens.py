"""Pretraining tokens: uint16 shards on disk, fixed-length training windows that respect documents.

Why this layout: tokenising once (the "tokenize" stage) and memory-mapping the result means a
training step never runs the tokenizer and never holds the corpus in RAM. Every document is
encoded without special tokens and followed by `<|endoftext|>`, the document separator, so the
model learns to end a text. The token stream is cut into `shard-NNNNN.bin` files of whole
documents (raw uint16, readable with `np.memmap`), each with `shard-NNNNN.idx.npy`: the int64
offsets of its document boundaries (first 0, last the shard's token count). `index.json` lists
the shards with their token and document counts.

Windows follow the Hugging Face convention the model uses (labels aligned with input_ids, the
model shifts them by one). Consecutive windows overlap by one token, so every token of the
stream after the first is a prediction target exactly once. Inside a window, attention and loss
never cross a document boundary: `document_ids` separate the documents, `position_ids` restart
at each document start, and the first token of a document is not a target (it must not be
predicted from the previous document).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # keeps `import` of this module (and params validation) light
    from transformers import PreTrainedTokenizerBase

TOKEN_DTYPE = np.uint16
DOCUMENT_SEPARATOR = "<|endoftext|>"
IGNORE_INDEX = -100  # label value that contributes no loss (PyTorch cross-entropy default)
INDEX_FILE = "index.json"
ENCODE_BATCH_DOCS = 1024  # documents encoded per tokenizer call: fast (Rust, batched) and bounded

Row = dict[str, np.ndarray]  # one training row: input_ids, labels, document_ids, position_ids


class PretrainTokensConfig(BaseModel):
    """How pretraining text is written as token shards (part of the `tokenize` stage params)."""

    model_config = ConfigDict(extra="forbid")

    shard_tokens: int = Field(
        default=64 * 2**20,
        ge=1024,
        description="A shard is closed after the first document that takes it to this many "
        "tokens (64 Mi tokens = 128 MiB of uint16).",
    )


def check_fits_token_dtype(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise unless every token id of `tokenizer` fits the uint16 token files."""
    limit = np.iinfo(TOKEN_DTYPE).max + 1
    if len(tokenizer) > limit:
        raise ValueError(f"vocabulary of {len(tokenizer)} tokens does not fit uint16 ({limit})")


def write_index(out_dir: Path, index: dict) -> None:
    """Write `index.json`, the small description a reader starts from."""
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def read_index(tokens_dir: Path) -> dict:
    return json.loads((Path(tokens_dir) / INDEX_FILE).read_text())


def write_pretrain_tokens(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    shard_tokens: int = PretrainTokensConfig().shard_tokens,
) -> dict:
    """Encode `texts` into uint16 token shards under `out_dir` and return the stats.

    Streams: only one batch of documents and one shard's boundary offsets are in memory. Empty
    texts are skipped (counted as `empty_documents`). Writes nothing outside `out_dir`, so the
    caller can build it in a temporary folder and rename it into place.
    """
    check_fits_token_dtype(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    separator = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
    writer = _ShardWriter(out_dir, shard_tokens)
    empty = 0
    for ids in _encode_documents(texts, tokenizer):
        if not ids:
            empty += 1
            continue
        writer.add_document(ids + [separator])
    writer.close()
    stats = {
        "documents": sum(shard["documents"] for shard in writer.shards),
        "tokens": sum(shard["tokens"] for shard in writer.shards),
        "empty_documents": empty,
        "shards": len(writer.shards),
    }
    write_index(out_dir, {
        "format": "pretrain-tokens",
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "vocab_size": len(tokenizer),
        "separator_id": separator,
        **stats,
        "shards": writer.shards,
    })
    return stats


def _encode_documents(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase
                      ) -> Iterator[list[int]]:
    texts = iter(texts)
    while chunk := list(islice(texts, ENCODE_BATCH_DOCS)):
        yield from tokenizer(chunk, add_special_tokens=False)["input_ids"]


class _ShardWriter:
    """Appends documents to the current shard file; rolls over to a new one after a full shard."""

    def __init__(self, out_dir: Path, shard_tokens: int) -> None:
        self.out_dir, self.shard_tokens = out_dir, shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._boundaries: list[int] = [0]

    def add_document(self, ids: list[int]) -> None:
        if self._file is None:
            # stays open across documents until the shard is full
            self._file = open(self.out_dir / self._name(".bin"), "wb")  # noqa: SIM115
        np.asarray(ids, dtype=TOKEN_DTYPE).tofile(self._file)
        self._boundaries.append(self._boundaries[-1] + len(ids))
        if self._boundaries[-1] >= self.shard_tokens:
            self._close_shard()

    def close(self) -> None:
        if self._file is not None:
            self._close_shard()

    def _name(self, suffix: str) -> str:
        return f"shard-{len(self.shards):05d}{suffix}"

    def _close_shard(self) -> None:
        self._file.close()
        np.save(self.out_dir / self._name(".idx.npy"), np.asarray(self._boundaries, np.int64))
        self.shards.append({
            "tokens_file": self._name(".bin"),
            "boundaries_file": self._name(".idx.npy"),
            "tokens": self._boundaries[-1],
            "documents": len(self._boundaries) - 1,
        })
        self._file, self._boundaries = None, [0]


class PretrainDataset:
    """Windows of `seq_len` tokens over the concatenated shards, as training rows.

    Window k covers stream tokens [k*(seq_len-1), k*(seq_len-1) + seq_len): neighbours share one
    token, the last input of one window being the first (label-less) token of the next. Rows are
    dicts of int64 arrays: `input_ids`, `labels` (= input_ids, but IGNORE_INDEX at the window's
    first token and at every document start), `document_ids` (0, 1, ... per document inside the
    window) and `position_ids` (0 at the window start and at every document start).
    """

    def __init__(self, tokens_dir: str | Path, seq_len: int) -> None:
        if seq_len < 2:
            raise ValueError("seq_len must be at least 2 (one input, one target)")
        tokens_dir = Path(tokens_dir)
        index = read_index(tokens_dir)
        self.seq_len = seq_len
        self._shards = [
            np.memmap(tokens_dir / shard["tokens_file"], dtype=index["dtype"], mode="r")
            for shard in index["shards"]
        ]
        self._shard_starts = np.cumsum([0] + [len(tokens) for tokens in self._shards])
        self.num_tokens = int(self._shard_starts[-1])
        self._num_windows = max(0, (self.num_tokens - 1) // (seq_len - 1))
        if self._num_windows == 0:
            raise ValueError(f"{tokens_dir} holds {self.num_tokens} tokens: too few for one "
                             f"window of {seq_len}")
        self._document_starts = np.concatenate([
            np.load(tokens_dir / shard["boundaries_file"])[:-1] + start
            for shard, start in zip(index["shards"], self._shard_starts[:-1], strict=True)
        ])

    def __len__(self) -> int:
        return self._num_windows

    def __getitem__(self, k: int) -> Row:
        if not 0 <= k < self._num_windows:
            raise IndexError(f"window {k} out of range [0, {self._num_windows})")
        start = k * (self.seq_len - 1)
        positions = np.arange(start, start + self.seq_len)
        document = np.searchsorted(self._document_starts, positions, side="right") - 1
        document_start = np.maximum(self._document_starts[document], start)
        input_ids = self._tokens(start, start + self.seq_len)
        labels = input_ids.copy()
        labels[0] = IGNORE_INDEX
        labels[1:][document[1:] != document[:-1]] = IGNORE_INDEX
        return {
            "input_ids": input_ids,
            "labels": labels,
            "document_ids": document - document[0],
            "position_ids": positions - document_start,
        }

    def _tokens(self, start: int, stop: int) -> np.ndarray:
        """Stream tokens [start, stop) as int64, read across shard edges where needed."""
        first = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        pieces = []
        for shard, shard_start in zip(self._shards[first:], self._shard_starts[first:-1],
                                      strict=True):
            pieces.append(shard[max(0, start - shard_start):stop - shard_start])
            if shard_start + len(shard) >= stop:
                break
        return np.concatenate(pieces).astype(np.int64)


def unigram_entropy(tokens_dir: str | Path) -> float:
    """Entropy (nats/token) of the corpus's unigram distribution over its token shards.

    The loss a model reaches by predicting token frequencies alone: the bar any real language
    model must clear by a wide margin.
    """
    tokens_dir = Path(tokens_dir)
    index = read_index(tokens_dir)
    counts = np.zeros(index["vocab_size"], dtype=np.int64)
    for shard in index["shards"]:
        tokens = np.memmap(tokens_dir / shard["tokens_file"], dtype=index["dtype"], mode="r")
        counts += np.bincount(tokens, minlength=len(counts))[: len(counts)]
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())
