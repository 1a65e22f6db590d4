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

Omni records (MiniMind-O) speak too: each `<audio>` of a user turn becomes a run of
`<|audio_pad|>` tokens as long as its clip's token count in the (ragged) audio feature cache,
and batches of a dataset built with an audio cache also carry `audio_features`: float32
(total audio tokens, D), every clip's tokens in pad-run order, which `MiniMindOmni` consumes.
A cut inside a clip's run drops the record (`dropped_cut_audio`), like one inside an image.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow.parquet as pq
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
AUDIO_MARKER = "<audio>"
AUDIO_PAD = "<|audio_pad|>"
DROP_REASONS = ("dropped_no_assistant", "dropped_too_long", "dropped_cut_image",
                "dropped_cut_audio")


class Features(Protocol):
    """What is needed of the feature cache (`minimind.data.features.FeatureStore`)."""

    num_tokens: int
    feature_dim: int

    def __contains__(self, sha256: object) -> bool: ...

    def __getitem__(self, sha256: str) -> np.ndarray: ...


class AudioFeatures(Protocol):
    """What is needed of a ragged (audio) feature cache: tokens per clip, and the tokens."""

    feature_dim: int

    def __contains__(self, sha256: object) -> bool: ...

    def __getitem__(self, sha256: str) -> np.ndarray: ...

    def length(self, sha256: str) -> int: ...


class Dropped(Exception):
    """A record that cannot be trained on within `max_len`; `reason` is its stats counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VLMExample:
    """One tokenized conversation: ids, labels (IGNORE_INDEX outside assistant tokens), the
    sha256 of each image and of each audio clip whose pad run is in `input_ids`, in order."""

    input_ids: np.ndarray
    labels: np.ndarray
    images: tuple[str, ...]
    audios: tuple[str, ...] = ()


# --------------------------------------------------------------------------- one record


def parse_messages(conversations: str | list[dict]) -> list[dict]:
    """The message list of a clean vlm row (stored as a JSON string)."""
    return json.loads(conversations) if isinstance(conversations, str) else list(conversations)


def count_markers(messages: Iterable[dict], marker: str = IMAGE_MARKER) -> int:
    """`marker`s in the user turns: one per image (or clip), in order."""
    return sum(m.get("content", "").count(marker) for m in messages
               if m.get("role") == "user")


def expand_images(messages: Iterable[dict], image_tokens: int) -> list[dict]:
    """Copies of `messages` with each `<image>` of a user turn replaced by the pad run."""
    run = IMAGE_PAD * image_tokens
    return [{**m, "content": m["content"].replace(IMAGE_MARKER, run)}
            if m.get("role") == "user" and isinstance(m.get("content"), str) else m
            for m in messages]


def expand_audio(messages: Iterable[dict], lengths: Sequence[int]) -> list[dict]:
    """Copies of `messages` with the k-th `<audio>` of the user turns replaced by a run of
    `lengths[k]` audio pads (clips have different lengths, so runs are placed in order)."""
    runs = iter(lengths)
    out = []
    for m in messages:
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            pieces = m["content"].split(AUDIO_MARKER)
            content = pieces[0] + "".join(AUDIO_PAD * next(runs) + rest for rest in pieces[1:])
            m = {**m, "content": content}
        out.append(m)
    return out


def check_media(messages: list[dict], images: Sequence[str], audios: Sequence[str] = ()
                ) -> None:
    """Raise unless the markers match the images and clips one to one and only user turns
    show or play them."""
    for marker, pad, media, items in ((IMAGE_MARKER, IMAGE_PAD, "images", images),
                                      (AUDIO_MARKER, AUDIO_PAD, "clips", audios)):
        for m in messages:
            if m.get("role") != "user" and marker in (m.get("content") or ""):
                raise ValueError(f"an {marker} marker in a {m.get('role')!r} turn; only user "
                                 f"turns may hold {media}")
            if pad in (m.get("content") or ""):
                raise ValueError(f"the text of a {m.get('role')!r} turn holds {pad} itself")
        markers = count_markers(messages, marker)
        if markers != len(items):
            raise ValueError(f"{markers} {marker} markers but {len(items)} {media}")


def encode_vlm(tokenizer: PreTrainedTokenizerBase, messages: list[dict], images: Sequence[str],
               image_tokens: int, max_len: int, audios: Sequence[str] = (),
               audio_lengths: Sequence[int] = ()) -> VLMExample:
    """Tokenize one conversation with its images (and clips, `audio_lengths` tokens each);
    raise `Dropped` if it cannot train.

    Raises ValueError for a malformed record (markers vs media, a pad under the loss).
    """
    check_media(messages, images, audios)
    expanded = expand_audio(expand_images(messages, image_tokens), audio_lengths)
    ids, mask = encode_conversation(tokenizer, expanded)
    array, in_loss = np.asarray(ids), np.asarray(mask, dtype=bool)
    runs = {}
    for pad, count, what in ((IMAGE_PAD, len(images) * image_tokens, "images"),
                             (AUDIO_PAD, sum(audio_lengths), "clips")):
        pads = runs[pad] = array == tokenizer.convert_tokens_to_ids(pad)
        if int(pads.sum()) != count:
            raise ValueError(f"the {what} should give {count} {pad} tokens, the chat template "
                             f"produced {int(pads.sum())}")
        if in_loss[pads].any():
            raise ValueError(f"{pad} tokens fall under the assistant loss mask")
    if not any(mask):
        raise Dropped("dropped_no_assistant")
    if len(ids) > max_len:
        for pad, reason in ((IMAGE_PAD, "dropped_cut_image"), (AUDIO_PAD, "dropped_cut_audio")):
            if runs[pad][max_len - 1] and runs[pad][max_len]:
                raise Dropped(reason)
    fitted = fit_to_length(ids, mask, max_len)
    if fitted is None:
        raise Dropped("dropped_too_long")
    ids, mask = fitted
    # Whole runs only (the cut is never inside one): count the pads that survived.
    kept_images = int(runs[IMAGE_PAD][: len(ids)].sum()) // image_tokens
    kept_audio_pads = int(runs[AUDIO_PAD][: len(ids)].sum())
    kept_audios = int(np.searchsorted(np.cumsum(audio_lengths), kept_audio_pads, side="right"))
    input_ids = np.asarray(ids, dtype=np.int64)
    labels = np.where(np.asarray(mask, dtype=bool), input_ids, IGNORE_INDEX)
    return VLMExample(input_ids, labels, tuple(images[:kept_images]), tuple(audios[:kept_audios]))


# --------------------------------------------------------------------------- a split


def read_vlm_rows(clean_dir: Path, split: str, sources: Sequence[str] | None = None
                  ) -> list[dict[str, Any]]:
    """Clean vlm or omni rows (`conversations`, `images`, `source`, an omni row's
    `question_audios` and `answer_audio`, and the evaluation fields `answer_types` and
    `answer_choices` where the shards hold them) of one split, optionally only those of the
    named sources; raise if none match (a typo'd source name, most likely)."""
    paths = shard_paths(Path(clean_dir), split)
    if not paths:
        raise FileNotFoundError(f"no {split}-*.parquet shards in {clean_dir}")
    columns = ["conversations", "images", "source"]
    names = pq.read_schema(paths[0]).names
    columns += [name for name in ("question_audios", "answer_audio", "answer_types",
                                  "answer_choices") if name in names]
    rows, seen = [], Counter()
    for row in iter_rows(paths, columns):
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
                 stats: dict[str, int], audio_features: AudioFeatures | None = None) -> None:
        if not examples:
            raise ValueError(f"no trainable records (stats: {stats})")
        self.examples, self.features, self.pad_id, self.stats = examples, features, pad_id, stats
        self.audio_features = audio_features

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                  features: Features, max_len: int, desc: str = "tokenize",
                  audio_features: AudioFeatures | None = None) -> VLMDataset:
        """Tokenize contract-2 rows (`conversations` JSON, `images` sha256 list, and for omni
        rows `question_audios`, which needs `audio_features`)."""
        stats = dict.fromkeys(["records", "tokens", "trained_tokens", "images", "images_cut_off",
                               "audios", *DROP_REASONS], 0)
        examples = []
        for number, row in enumerate(tqdm(rows, desc=desc, unit="rec")):
            images = list(row["images"])
            audios = list(row.get("question_audios") or [])
            if missing := [sha for sha in images if sha not in features]:
                raise ValueError(f"record {number} ({row.get('source')}): image {missing[0]} is "
                                 "not in the feature cache; rerun the features stage")
            if audios and audio_features is None:
                raise ValueError(f"record {number} ({row.get('source')}) holds audio but no "
                                 "audio feature cache was given")
            if missing := [sha for sha in audios if sha not in audio_features]:
                raise ValueError(f"record {number} ({row.get('source')}): clip {missing[0]} is "
                                 "not in the audio feature cache; rerun the features stage")
            lengths = [audio_features.length(sha) for sha in audios] if audios else []
            messages = parse_messages(row["conversations"])
            try:
                example = encode_vlm(tokenizer, messages, images, features.num_tokens, max_len,
                                     audios, lengths)
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
            stats["audios"] += len(example.audios)
        stats["records"] = len(examples)
        pad_id = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
        return cls(examples, features, pad_id, stats, audio_features)

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
        return collate_vlm([self.examples[i] for i in indices], self.features, self.pad_id,
                           self.audio_features)


def collate_vlm(examples: Sequence[VLMExample], features: Features, pad_id: int,
                audio_features: AudioFeatures | None = None) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` / `labels` / `attention_mask` (int64, to the longest row),
    `image_features` (float32, images x N x D, in row-major order of the pad runs) and, given
    an audio cache, `audio_features` (float32, total clip tokens x D, in pad-run order)."""
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
    batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
             "attention_mask": torch.from_numpy(attention_mask),
             "image_features": torch.from_numpy(image_features)}
    if audio_features is not None:
        clips = [audio_features[sha] for example in examples for sha in example.audios]
        batch["audio_features"] = torch.from_numpy(
            np.concatenate(clips).astype(np.float32) if clips
            else np.zeros((0, audio_features.feature_dim), np.float32))
    return batch


class VLMBatchStream:
    """BatchStream over a VLMDataset: the same seeded order, rank split and resume, with
    variable-length rows collated by `collate_vlm`."""

    def __init__(self, dataset: VLMDataset, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        self.dataset = dataset
        self._positions = BatchStream(Positions(len(dataset)), batch_size, seed, rank,
                                      world_size, shuffle)

    @property
    def steps_per_epoch(self) -> int:
        return self._positions.steps_per_epoch

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
