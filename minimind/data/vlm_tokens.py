"""VLM training sequences: chat-templated conversations whose `<image>` markers became pad runs.

Each `<image>` in a user turn becomes N `<|image_pad|>` tokens (N = the feature cache's tokens
per image); inside the model those pads' embeddings are replaced by the image's projected
features. The loss mask is the SFT one (assistant tokens only, from the chat template), so the
pads, being user content, never carry loss — checked for every record all the same, since a
pad under the loss would train the model to predict a placeholder.

Records are few (thousands), so a split is tokenized up front into memory. A record longer
than `max_len` is cut like an SFT conversation (at `max_len`, then after its last assistant
token), but never inside an image's pad run: features come in whole images, so a record whose
cut would split a run is dropped and counted instead. Images wholly after the cut (in later
turns) are simply not used.

Batches are right-padded to their longest row and carry `image_features`: float32 (images, N,
D) read from the feature cache in the order the pad runs appear (row by row), which is the
order `MiniMindVLM` consumes them in. Training never runs an image encoder.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from minimind.data.batches import BatchStream, Positions, eval_batches
from minimind.data.pretrain_tokens import DOCUMENT_SEPARATOR, IGNORE_INDEX
from minimind.data.sft_tokens import encode_conversation, fit_to_length
from minimind.data.shards import iter_rows, shard_paths
from minimind.evaluation import spread

if TYPE_CHECKING:  # keeps `import` of this module light
    from transformers import PreTrainedTokenizerBase

IMAGE_MARKER = "<image>"
IMAGE_PAD = "<|image_pad|>"
DROP_REASONS = ("dropped_no_assistant", "dropped_too_long", "dropped_cut_image")


class Features(Protocol):
    """What is needed of the feature cache (`minimind.data.features.FeatureStore`)."""

    num_tokens: int
    feature_dim: int

    def __contains__(self, sha256: object) -> bool: ...

    def __getitem__(self, sha256: str) -> np.ndarray: ...


class Dropped(Exception):
    """A record that cannot be trained on within `max_len`; `reason` is its stats counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VLMExample:
    """One tokenized conversation: ids, labels (IGNORE_INDEX outside assistant tokens) and the
    sha256 of each image whose pad run is in `input_ids`, in order."""

    input_ids: np.ndarray
    labels: np.ndarray
    images: tuple[str, ...]


# --------------------------------------------------------------------------- one record


def parse_messages(conversations: str | list[dict]) -> list[dict]:
    """The message list of a clean vlm row (stored as a JSON string)."""
    return json.loads(conversations) if isinstance(conversations, str) else list(conversations)


def count_markers(messages: Iterable[dict]) -> int:
    """`<image>` markers in the user turns: one per image, in image order."""
    return sum(m.get("content", "").count(IMAGE_MARKER) for m in messages
               if m.get("role") == "user")


def expand_images(messages: Iterable[dict], image_tokens: int) -> list[dict]:
    """Copies of `messages` with each `<image>` of a user turn replaced by the pad run."""
    run = IMAGE_PAD * image_tokens
    return [{**m, "content": m["content"].replace(IMAGE_MARKER, run)}
            if m.get("role") == "user" and isinstance(m.get("content"), str) else m
            for m in messages]


def check_images(messages: list[dict], images: Sequence[str]) -> None:
    """Raise unless the markers match the images one to one and only users show images."""
    for m in messages:
        if m.get("role") != "user" and IMAGE_MARKER in (m.get("content") or ""):
            raise ValueError(f"an <image> marker in a {m.get('role')!r} turn; only user turns "
                             "may show images")
        if IMAGE_PAD in (m.get("content") or ""):
            raise ValueError(f"the text of a {m.get('role')!r} turn holds {IMAGE_PAD} itself")
    markers = count_markers(messages)
    if markers != len(images):
        raise ValueError(f"{markers} <image> markers but {len(images)} images")


def encode_vlm(tokenizer: PreTrainedTokenizerBase, messages: list[dict], images: Sequence[str],
               image_tokens: int, max_len: int) -> VLMExample:
    """Tokenize one conversation with its images; raise `Dropped` if it cannot train.

    Raises ValueError for a malformed record (markers vs images, a pad under the loss).
    """
    check_images(messages, images)
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    ids, mask = encode_conversation(tokenizer, expand_images(messages, image_tokens))
    pads = np.asarray(ids) == pad_id
    if int(pads.sum()) != len(images) * image_tokens:
        raise ValueError(f"{len(images)} images should give {len(images) * image_tokens} "
                         f"{IMAGE_PAD} tokens, the chat template produced {int(pads.sum())}")
    if np.asarray(mask, dtype=bool)[pads].any():
        raise ValueError(f"{IMAGE_PAD} tokens fall under the assistant loss mask")
    if not any(mask):
        raise Dropped("dropped_no_assistant")
    if len(ids) > max_len and pads[max_len - 1] and pads[max_len]:
        raise Dropped("dropped_cut_image")
    fitted = fit_to_length(ids, mask, max_len)
    if fitted is None:
        raise Dropped("dropped_too_long")
    ids, mask = fitted
    kept_pads = int(pads[: len(ids)].sum())  # whole runs: the cut is never inside one
    input_ids = np.asarray(ids, dtype=np.int64)
    labels = np.where(np.asarray(mask, dtype=bool), input_ids, IGNORE_INDEX)
    return VLMExample(input_ids, labels, tuple(images[: kept_pads // image_tokens]))


# --------------------------------------------------------------------------- a split


def read_vlm_rows(clean_dir: Path, split: str, sources: Sequence[str] | None = None
                  ) -> list[dict[str, Any]]:
    """Clean vlm rows (`conversations`, `images`, `source`) of one split, optionally only
    those of the named sources; raise if none match (a typo'd source name, most likely)."""
    paths = shard_paths(Path(clean_dir), split)
    if not paths:
        raise FileNotFoundError(f"no {split}-*.parquet shards in {clean_dir}")
    rows, seen = [], Counter()
    for row in iter_rows(paths, ["conversations", "images", "source"]):
        seen[row["source"]] += 1
        if sources is None or row["source"] in sources:
            rows.append(row)
    if not rows:
        raise ValueError(f"no {split} records of sources {list(sources or [])} in {clean_dir}; "
                         f"it holds {dict(seen)}")
    return rows


class VLMDataset:
    """The tokenized conversations of one split, with the feature cache their images live in.

    Item i is a `VLMExample`; `stats` counts records, tokens and drops by reason.
    """

    def __init__(self, examples: list[VLMExample], features: Features, pad_id: int,
                 stats: dict[str, int]) -> None:
        if not examples:
            raise ValueError(f"no trainable records (stats: {stats})")
        self.examples, self.features, self.pad_id, self.stats = examples, features, pad_id, stats

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                  features: Features, max_len: int, desc: str = "tokenize") -> VLMDataset:
        """Tokenize contract-2 rows (`conversations` JSON, `images` sha256 list)."""
        stats = dict.fromkeys(["records", "tokens", "trained_tokens", "images", "images_cut_off",
                               *DROP_REASONS], 0)
        examples = []
        for number, row in enumerate(tqdm(rows, desc=desc, unit="rec")):
            images = list(row["images"])
            if missing := [sha for sha in images if sha not in features]:
                raise ValueError(f"record {number} ({row.get('source')}): image {missing[0]} is "
                                 "not in the feature cache; rerun the features stage")
            messages = parse_messages(row["conversations"])
            try:
                example = encode_vlm(tokenizer, messages, images, features.num_tokens, max_len)
            except Dropped as drop:
                stats[drop.reason] += 1
                continue
            except ValueError as exc:
                raise ValueError(f"record {number} ({row.get('source')}): {exc}") from exc
            examples.append(example)
            stats["images_cut_off"] += len(images) - len(example.images)
            stats["tokens"] += len(example.input_ids)
            stats["trained_tokens"] += int((example.labels != IGNORE_INDEX).sum())
            stats["images"] += len(example.images)
        stats["records"] = len(examples)
        pad_id = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
        return cls(examples, features, pad_id, stats)

    @classmethod
    def from_clean(cls, clean_dir: Path, split: str, tokenizer: PreTrainedTokenizerBase,
                   features: Features, max_len: int, sources: Sequence[str] | None = None
                   ) -> VLMDataset:
        """The records of `sources` (all if None) in `clean_dir`'s `split` shards."""
        rows = read_vlm_rows(clean_dir, split, sources)
        return cls.from_rows(rows, tokenizer, features, max_len, desc=f"tokenize {split}")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> VLMExample:
        return self.examples[i]

    def collate(self, indices: Iterable[int]) -> dict[str, torch.Tensor]:
        """Batch the examples at `indices` (see `collate_vlm`)."""
        return collate_vlm([self.examples[i] for i in indices], self.features, self.pad_id)


def collate_vlm(examples: Sequence[VLMExample], features: Features, pad_id: int
                ) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` / `labels` / `attention_mask` (int64, to the longest row) and
    `image_features` (float32, images x N x D, in row-major order of the pad runs)."""
    shape = (len(examples), max(len(e.input_ids) for e in examples))
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros(shape, dtype=np.int64)
    for r, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[r, :length] = example.input_ids
        labels[r, :length] = example.labels
        attention_mask[r, :length] = 1
    shas = [sha for example in examples for sha in example.images]
    image_features = np.zeros((len(shas), features.num_tokens, features.feature_dim), np.float32)
    for i, sha in enumerate(shas):
        image_features[i] = features[sha]
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attention_mask),
            "image_features": torch.from_numpy(image_features)}


class VLMBatchStream:
    """BatchStream over a VLMDataset: the same seeded order, rank split and resume, with
    variable-length rows collated by `collate_vlm`."""

    def __init__(self, dataset: VLMDataset, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        self.dataset = dataset
        self._positions = BatchStream(Positions(len(dataset)), batch_size, seed, rank,
                                      world_size, shuffle)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.dataset.collate(next(self._positions)["index"].tolist())

    def state_dict(self) -> dict[str, int | bool]:
        return self._positions.state_dict()

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        self._positions.load_state_dict(state)


def eval_vlm_batches(dataset: VLMDataset, batch_size: int, max_rows: int | None = None
                     ) -> Iterator[dict[str, torch.Tensor]]:
    """One pass in batches over `max_rows` examples spread evenly over the set (all if None;
    stored order groups sources, so the first ones would be one source only)."""
    indices = list(range(len(dataset)))
    if max_rows is not None:
        indices = spread(indices, max_rows)
    for positions in eval_batches(Positions(len(indices)), batch_size):
        yield dataset.collate(indices[i] for i in positions["index"].tolist())
