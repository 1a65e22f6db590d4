"""The vision feature cache: every unique image's encoder tokens, computed once, read by memmap.

Running a frozen encoder inside every training step would cost far more than the step itself,
and it would compute the same features again each epoch. So the features stage runs the
encoder exactly once per unique image (keyed by the sha256 clean gives it) and stores:

    encoder.json         the encoder's describe() (what reloads it, N, D, preprocessing),
                         plus the image count and storage layout
    shard-NNNNN.npy      float16 [rows, N, D], plain .npy so readers memory-map them
    index.parquet        sha256 -> (shard, row)

Training and evaluation open it with `FeatureStore` and never touch an encoder. float16 halves
the disk and page-cache footprint at a relative rounding error of about 1e-3, which a
projector trained on these very features never notices.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from minimind.data.images import decode_image

if TYPE_CHECKING:
    from PIL import Image

    from minimind.encoders.vision import VisionEncoder

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.json"
INDEX_FILE = "index.parquet"
SHARD_PATTERN = "shard-{:05d}.npy"
SHARD_BYTES = 128 << 20  # a shard is built in memory before it is written: bound that memory
INDEX_SCHEMA = pa.schema([("sha256", pa.string()), ("shard", pa.int32()), ("row", pa.int32())])


class VisionFeaturesConfig(BaseModel):
    """Which vision encoder the features stage runs, and how (params `features.vision`)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(default="efficientnet-lite0", min_length=1,
                         description="efficientnet-lite0, or a transformers vision model "
                                     "(hub id or local directory: SigLIP, SigLIP2, CLIP)")
    batch_size: int = Field(default=32, ge=1, description="images per encoder forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present, else CPU")


class FeatureStore:
    """Read-only view of a feature cache directory: `store[sha256]` -> float16 [N, D].

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
        self.num_tokens = int(self.encoder["num_tokens"])
        self.feature_dim = int(self.encoder["feature_dim"])
        index = pq.read_table(self.directory / INDEX_FILE).to_pydict()
        self._where = dict(zip(index["sha256"], zip(index["shard"], index["row"], strict=True),
                               strict=True))
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._where

    def __getitem__(self, sha256: str) -> np.ndarray:
        try:
            shard, row = self._where[sha256]
        except KeyError:
            raise KeyError(f"image {sha256} is not in the feature cache {self.directory}; "
                           "rerun the features stage on the current clean data") from None
        return self._shard(shard)[row]

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._shards:
            path = self.directory / SHARD_PATTERN.format(number)
            array = np.load(path, mmap_mode="r")
            expected = (self.num_tokens, self.feature_dim)
            if array.dtype != np.float16 or array.shape[1:] != expected:
                raise ValueError(f"{path}: {array.dtype} {array.shape}, expected float16 "
                                 f"[rows, {expected[0]}, {expected[1]}] per {ENCODER_FILE}")
            self._shards[number] = array
        return self._shards[number]


class _ShardWriter:
    """Fills one preallocated float16 shard at a time; writes it when full (or at close)."""

    def __init__(self, directory: Path, rows: int, token_shape: tuple[int, int]) -> None:
        self.directory, self.rows = directory, rows
        self.buffer = np.empty((rows, *token_shape), dtype=np.float16)
        self.filled, self.shards = 0, 0

    def append(self, features: np.ndarray) -> list[tuple[int, int]]:
        """Store [B, N, D] features; return each one's (shard, row)."""
        where: list[tuple[int, int]] = []
        start = 0
        while start < len(features):
            take = min(len(features) - start, self.rows - self.filled)
            self.buffer[self.filled:self.filled + take] = features[start:start + take]
            where += [(self.shards, self.filled + i) for i in range(take)]
            self.filled += take
            start += take
            if self.filled == self.rows:
                self._flush()
        return where

    def _flush(self) -> None:
        np.save(self.directory / SHARD_PATTERN.format(self.shards), self.buffer[:self.filled])
        self.shards += 1
        self.filled = 0

    def close(self) -> None:
        if self.filled:
            self._flush()


def _decode(sha256: str, data: bytes) -> Image.Image:
    try:
        return decode_image(data)
    except Exception as err:  # clean validated every image, so say which one broke, and how
        raise ValueError(f"image {sha256}: cannot decode ({type(err).__name__}: {err})") from err


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
    index: dict[str, list] = {"sha256": [], "shard": [], "row": []}
    seen: set[str] = set()
    batch: list[tuple[str, bytes]] = []
    total = 0
    started = time.perf_counter()

    with tqdm(desc="features", unit="img", disable=not progress) as bar:

        def flush() -> None:
            features = encoder.encode([_decode(sha, data) for sha, data in batch])
            where = writer.append(features.cpu().numpy().astype(np.float16))
            for (sha, _), (shard, row) in zip(batch, where, strict=True):
                index["sha256"].append(sha)
                index["shard"].append(shard)
                index["row"].append(row)
            bar.update(len(batch))
            batch.clear()

        for sha, data in images:
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
    pq.write_table(pa.table(index, schema=INDEX_SCHEMA), out_dir / INDEX_FILE)
    seconds = time.perf_counter() - started
    unique = len(seen)
    meta = {**encoder.describe(), "images": unique, "dtype": "float16",
            "shards": writer.shards, "shard_rows": rows}
    tmp = out_dir / f".{ENCODER_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / ENCODER_FILE)
    stats = {"images": total, "unique_images": unique, "duplicates_skipped": total - unique,
             "num_tokens": encoder.num_tokens, "feature_dim": encoder.feature_dim,
             "shards": writer.shards, "seconds": round(seconds, 3),
             "images_per_s": round(unique / seconds, 2) if seconds > 0 else 0.0,
             "encoder": encoder.spec}
    log.info("encoded %d unique images (%d duplicates skipped) with %s in %.1fs: "
             "%.1f images/s", unique, total - unique, encoder.spec, seconds,
             stats["images_per_s"])
    return stats
