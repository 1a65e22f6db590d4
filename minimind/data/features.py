"""The feature caches: every unique image's or clip's encoder tokens, computed once, read by memmap.

Running a frozen encoder inside every training step would cost far more than the step itself,
and it would compute the same features again each epoch. So the features stage runs the
encoder exactly once per unique image (keyed by the sha256 clean gives it) and stores:

    encoder.json         the encoder's describe() (what reloads it, N, D, preprocessing),
                         plus the image count and storage layout
    shard-NNNNN.npy      float16 [rows, N, D], plain .npy so readers memory-map them
    index.parquet        sha256 -> (shard, row)

Audio clips give a variable number of tokens each, so an audio cache (`write_audio_features`)
is "ragged": its shards are float16 [tokens, D], every clip's tokens one contiguous run, and
the index adds each clip's `length` (`row` is then its first token). encoder.json says which
layout a cache has (`layout`: "fixed" or "ragged"; caches without the key are fixed).

Training and evaluation open it with `FeatureStore` and never touch an encoder. float16 halves
the disk and page-cache footprint at a relative rounding error of about 1e-3, which a
projector trained on these very features never notices.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from minimind.data.audio import SAMPLE_RATE, decode_audio
from minimind.data.images import decode_image

if TYPE_CHECKING:

    from minimind.encoders.audio import AudioEncoder
    from minimind.encoders.vision import VisionEncoder

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.json"
INDEX_FILE = "index.parquet"
SHARD_PATTERN = "shard-{:05d}.npy"
SHARD_BYTES = 128 << 20  # a shard is built in memory before it is written: bound that memory
INDEX_SCHEMA = pa.schema([("sha256", pa.string()), ("shard", pa.int32()), ("row", pa.int32())])
RAGGED_INDEX_SCHEMA = pa.schema([*INDEX_SCHEMA, ("length", pa.int32())])


class VisionFeaturesConfig(BaseModel):
    """Which vision encoder the features stage runs, and how (params `features.vision`)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(default="efficientnet-lite0", min_length=1,
                         description="efficientnet-lite0, or a transformers vision model "
                                     "(hub id or local directory: SigLIP, SigLIP2, CLIP)")
    batch_size: int = Field(default=32, ge=1, description="images per encoder forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present, else CPU")


class AudioFeaturesConfig(BaseModel):
    """Which audio encoder the features stage runs, and how (params `features.audio`)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(default="log-mel", min_length=1,
                         description="log-mel, or a transformers Whisper model (hub id or "
                                     "local directory)")
    batch_size: int = Field(default=16, ge=1, description="clips per encoder call")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present, else CPU")


class FeatureStore:
    """Read-only view of a feature cache directory: `store[sha256]` -> float16 [N, D].

    In a ragged (audio) cache N varies per item: `length(sha256)` gives it without reading
    the features, and `num_tokens` is None.

    Shards are memory-mapped on first use, so opening a cache of any size is cheap and the OS
    page cache, not the process, holds the features.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta = self.directory / ENCODER_FILE
        if not meta.is_file():
            raise FileNotFoundError(f"{self.directory}: not a feature cache (no {ENCODER_FILE}); "
                                    "run the features stage")
        self.encoder: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
        self.ragged = self.encoder.get("layout", "fixed") == "ragged"
        self.num_tokens: int | None = None if self.ragged else int(self.encoder["num_tokens"])
        self.feature_dim = int(self.encoder["feature_dim"])
        index = pq.read_table(self.directory / INDEX_FILE).to_pydict()
        lengths = index["length"] if self.ragged else [self.num_tokens] * len(index["sha256"])
        self._where = dict(zip(index["sha256"],
                               zip(index["shard"], index["row"], lengths, strict=True),
                               strict=True))
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._where

    def __getitem__(self, sha256: str) -> np.ndarray:
        shard, row, length = self._locate(sha256)
        if self.ragged:
            return self._shard(shard)[row:row + length]
        return self._shard(shard)[row]

    def length(self, sha256: str) -> int:
        """How many tokens the item has (num_tokens for every item of a fixed cache)."""
        return self._locate(sha256)[2]

    def _locate(self, sha256: str) -> tuple[int, int, int]:
        try:
            return self._where[sha256]
        except KeyError:
            what = "clip" if self.ragged else "image"
            raise KeyError(f"{what} {sha256} is not in the feature cache {self.directory}; "
                           "rerun the features stage on the current clean data") from None

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._shards:
            path = self.directory / SHARD_PATTERN.format(number)
            array = np.load(path, mmap_mode="r")
            expected = (self.feature_dim,) if self.ragged else (self.num_tokens, self.feature_dim)
            if array.dtype != np.float16 or array.shape[1:] != expected:
                rows = "tokens" if self.ragged else "rows"
                raise ValueError(f"{path}: {array.dtype} {array.shape}, expected float16 "
                                 f"[{rows}, {', '.join(map(str, expected))}] per {ENCODER_FILE}")
            self._shards[number] = array
        return self._shards[number]


class _ShardWriter:
    """Fills one preallocated float16 shard at a time; writes it when full (or at close).

    Keeps the index of what it stored: sha256 -> (shard, row).
    """

    schema = INDEX_SCHEMA

    def __init__(self, directory: Path, rows: int, token_shape: tuple[int, int]) -> None:
        self.directory, self.rows = directory, rows
        self.buffer = np.empty((rows, *token_shape), dtype=np.float16)
        self.filled, self.shards = 0, 0
        self.index: dict[str, list] = {name: [] for name in self.schema.names}

    def append(self, shas: list[str], features: np.ndarray) -> None:
        """Store [B, N, D] features of the B items `shas`."""
        start = 0
        while start < len(features):
            take = min(len(features) - start, self.rows - self.filled)
            self.buffer[self.filled:self.filled + take] = features[start:start + take]
            self._record(shas[start:start + take], [self.filled + i for i in range(take)])
            self.filled += take
            start += take
            if self.filled == self.rows:
                self._flush()

    def _record(self, shas: list[str], rows: list[int]) -> None:
        self.index["sha256"] += shas
        self.index["shard"] += [self.shards] * len(shas)
        self.index["row"] += rows

    def _flush(self) -> None:
        np.save(self.directory / SHARD_PATTERN.format(self.shards), self.buffer[:self.filled])
        self.shards += 1
        self.filled = 0

    def close(self) -> None:
        if self.filled:
            self._flush()


class _RaggedShardWriter(_ShardWriter):
    """Concatenates variable-length [L_i, D] items into float16 [tokens, D] shards.

    An item never straddles two shards; one longer than a shard's token budget gets a shard
    of its own.
    """

    schema = RAGGED_INDEX_SCHEMA

    def __init__(self, directory: Path, shard_tokens: int, feature_dim: int) -> None:
        super().__init__(directory, 0, (0, 0))
        self.shard_tokens, self.feature_dim = shard_tokens, feature_dim
        self.pending: list[np.ndarray] = []

    def append(self, shas: list[str], features: list[np.ndarray]) -> None:  # type: ignore[override]
        """Store each item's [L_i, D] features."""
        for sha, tokens in zip(shas, features, strict=True):
            if self.filled and self.filled + len(tokens) > self.shard_tokens:
                self._flush()
            self._record([sha], [self.filled])
            self.index["length"].append(len(tokens))
            self.pending.append(tokens.astype(np.float16))
            self.filled += len(tokens)

    def _flush(self) -> None:
        self.buffer = np.concatenate(self.pending) if self.pending else np.empty(
            (0, self.feature_dim), dtype=np.float16)
        self.pending = []
        super()._flush()


def _decode(what: str, sha256: str, data: bytes, decode: Callable[[bytes], Any]) -> Any:
    try:
        return decode(data)
    except Exception as err:  # clean validated every item, so say which one broke, and how
        raise ValueError(f"{what} {sha256}: cannot decode ({type(err).__name__}: {err})") from err


def _encode_once(items: Iterable[tuple[str, bytes]],
                 encode: Callable[[list[tuple[str, bytes]]], Any],
                 writer: _ShardWriter, batch_size: int, progress: bool, unit: str
                 ) -> tuple[int, int, float]:
    """Feed each unique (sha256, bytes) to `encode` once, in batches, into `writer`.

    A sha256 seen before in the stream is skipped without decoding. Returns (items seen,
    unique items, seconds).
    """
    seen: set[str] = set()
    batch: list[tuple[str, bytes]] = []
    total = 0
    started = time.perf_counter()
    with tqdm(desc="features", unit=unit, disable=not progress) as bar:

        def flush() -> None:
            writer.append([sha for sha, _ in batch], encode(batch))
            bar.update(len(batch))
            batch.clear()

        for sha, data in items:
            total += 1
            if sha in seen:
                continue
            seen.add(sha)
            batch.append((sha, data))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    writer.close()
    return total, len(seen), time.perf_counter() - started


def _finish(out_dir: Path, writer: _ShardWriter, meta: dict[str, Any]) -> None:
    """Write the index, then encoder.json last: a directory without it is never a cache."""
    pq.write_table(pa.table(writer.index, schema=writer.schema), out_dir / INDEX_FILE)
    tmp = out_dir / f".{ENCODER_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / ENCODER_FILE)


def write_features(images: Iterable[tuple[str, bytes]], encoder: VisionEncoder, out_dir: Path,
                   batch_size: int, progress: bool = True,
                   shard_rows: int | None = None) -> dict[str, Any]:
    """Encode each unique image of `(sha256, image bytes)` once and write the cache to out_dir.

    A sha256 seen before in the stream is skipped without decoding. `shard_rows` defaults to
    as many images as fit in SHARD_BYTES. The caller makes the directory write atomic (the
    stage writes into a temporary directory that replaces the old cache on success);
    encoder.json is written last, so a directory without it is never a finished cache.
    Returns counts and throughput for the stage's metrics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    token_shape = (encoder.num_tokens, encoder.feature_dim)
    rows = shard_rows or max(1, SHARD_BYTES // (2 * encoder.num_tokens * encoder.feature_dim))
    writer = _ShardWriter(out_dir, rows, token_shape)

    def encode(batch: list[tuple[str, bytes]]) -> np.ndarray:
        pictures = [_decode("image", sha, data, decode_image) for sha, data in batch]
        return encoder.encode(pictures).cpu().numpy().astype(np.float16)

    total, unique, seconds = _encode_once(images, encode, writer, batch_size, progress, "img")
    _finish(out_dir, writer, {**encoder.describe(), "images": unique, "dtype": "float16",
                              "layout": "fixed", "shards": writer.shards, "shard_rows": rows})
    stats = {"images": total, "unique_images": unique, "duplicates_skipped": total - unique,
             "num_tokens": encoder.num_tokens, "feature_dim": encoder.feature_dim,
             "shards": writer.shards, "seconds": round(seconds, 3),
             "images_per_s": round(unique / seconds, 2) if seconds > 0 else 0.0,
             "encoder": encoder.spec}
    log.info("encoded %d unique images (%d duplicates skipped) with %s in %.1fs: "
             "%.1f images/s", unique, total - unique, encoder.spec, seconds,
             stats["images_per_s"])
    return stats


def write_audio_features(clips: Iterable[tuple[str, bytes]], encoder: AudioEncoder,
                         out_dir: Path, batch_size: int, progress: bool = True,
                         shard_tokens: int | None = None) -> dict[str, Any]:
    """Encode each unique clean clip of `(sha256, WAV bytes)` once into a ragged cache.

    Like write_features, for audio: each clip's [L_i, D] tokens are stored contiguously and
    the index records L_i. `shard_tokens` defaults to as many tokens as fit in SHARD_BYTES.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = shard_tokens or max(1, SHARD_BYTES // (2 * encoder.feature_dim))
    writer = _RaggedShardWriter(out_dir, budget, encoder.feature_dim)
    seconds_of_audio = 0.0

    def encode(batch: list[tuple[str, bytes]]) -> list[np.ndarray]:
        nonlocal seconds_of_audio
        waves = [_decode("clip", sha, data, decode_audio) for sha, data in batch]
        seconds_of_audio += sum(len(wave) for wave in waves) / SAMPLE_RATE
        return [tokens.cpu().numpy() for tokens in encoder.encode(waves)]

    total, unique, seconds = _encode_once(clips, encode, writer, batch_size, progress, "clip")
    tokens = sum(writer.index["length"])
    _finish(out_dir, writer, {**encoder.describe(), "clips": unique, "tokens": tokens,
                              "dtype": "float16", "layout": "ragged", "num_tokens": None,
                              "shards": writer.shards, "shard_tokens": budget})
    stats = {"clips": total, "unique_clips": unique, "duplicates_skipped": total - unique,
             "tokens": tokens, "audio_seconds": round(seconds_of_audio, 2),
             "feature_dim": encoder.feature_dim, "shards": writer.shards,
             "seconds": round(seconds, 3),
             "clips_per_s": round(unique / seconds, 2) if seconds > 0 else 0.0,
             "audio_seconds_per_s": round(seconds_of_audio / seconds, 1) if seconds > 0 else 0.0,
             "encoder": encoder.spec}
    log.info("encoded %d unique clips (%.0f s of audio, %d duplicates skipped) with %s in "
             "%.1fs: %.1f clips/s", unique, seconds_of_audio, total - unique, encoder.spec,
             seconds, stats["clips_per_s"])
    return stats
