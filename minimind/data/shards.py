"""Parquet shards: streamed writes with bounded memory, streamed reads by column.

Cleaned data is stored as `<kind>/<split>-00000.parquet`, `-00001`, … so that a corpus of any
size is written with one small row buffer in memory and read back a batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class ShardWriter:
    """Append rows; they land in numbered Parquet files of at most `shard_rows` rows each."""

    def __init__(self, directory: Path, prefix: str, schema: pa.Schema, shard_rows: int,
                 buffer_rows: int = 2048) -> None:
        self.directory, self.prefix, self.schema = directory, prefix, schema
        self.shard_rows, self.buffer_rows = shard_rows, min(buffer_rows, shard_rows)
        self.rows_written = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._shard = 0
        self.paths: list[Path] = []

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.buffer_rows:
            self._flush()

    def _flush(self) -> None:
        while self._buffer:
            if self._writer is None:
                path = self.directory / f"{self.prefix}-{self._shard:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
                self.paths.append(path)
            room = self.shard_rows - self._rows_in_shard
            chunk, self._buffer = self._buffer[:room], self._buffer[room:]
            self._writer.write_table(pa.Table.from_pylist(chunk, schema=self.schema))
            self._rows_in_shard += len(chunk)
            self.rows_written += len(chunk)
            if self._rows_in_shard >= self.shard_rows:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self._rows_in_shard = None, 0
        self._shard += 1

    def close(self) -> None:
        self._flush()
        self._close_shard()


def shard_paths(directory: Path, split: str) -> list[Path]:
    """The shards of one split, in order."""
    return sorted(directory.glob(f"{split}-*.parquet"))


def iter_rows(paths: list[Path], columns: list[str], batch_rows: int = 4096
              ) -> Iterator[dict[str, Any]]:
    """Stream rows (as dicts of the chosen columns) from Parquet shards, a batch at a time."""
    for path in paths:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            yield from batch.to_pylist()


class UniqueRowStore:
    """Rows keyed by a content hash, each written once: the clean stores of images and audio.

    Media rows are large (a whole image or clip each), so the write buffer is small.
    """

    def __init__(self, directory: Path, prefix: str, schema: pa.Schema, shard_rows: int) -> None:
        self._writer = ShardWriter(directory, prefix, schema, shard_rows, buffer_rows=64)
        self._stored: set[str] = set()

    def _add(self, sha256: str, row: dict[str, Any]) -> bool:
        """Write the row unless `sha256` is already stored; True if it was new."""
        if sha256 in self._stored:
            return False
        self._stored.add(sha256)
        self._writer.write({"sha256": sha256, **row})
        return True

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._stored

    def __len__(self) -> int:
        return len(self._stored)

    def close(self) -> None:
        self._writer.close()


def human_size(count: int) -> str:
    """A byte count for reports: `512 B`, `3.1 kB`, `4.2 MB`."""
    if count < 1000:
        return f"{count} B"
    return f"{count / 1000:.1f} kB" if count < 1_000_000 else f"{count / 1e6:.1f} MB"
