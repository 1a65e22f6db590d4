"""Batches for training and evaluation: deterministic, resumable, and the same under any world size.

Why not a torch DataLoader with a sampler: resuming a killed run must continue with exactly the
batches it would have seen, and a run on 2 ranks must see exactly the rows a run on 1 rank with
twice the batch size sees. Both follow from one rule: an epoch's row order is a permutation
drawn from (seed, epoch), and the stream's whole state is (epoch, rows consumed in this epoch).
Each step consumes one global batch of `batch_size * world_size` rows; rank r takes the r-th
slice of `batch_size` rows. Rows are memory-mapped reads, cheap enough to build in the loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from minimind.data.pretrain_tokens import Row


def collate(rows: Sequence[Row]) -> dict[str, torch.Tensor]:
    """Stack equally long rows into a batch of int64 tensors of shape (len(rows), seq_len)."""
    return {key: torch.from_numpy(np.stack([row[key] for row in rows]).astype(np.int64))
            for key in rows[0]}


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class BatchStream:
    """Infinite iterator of training batches over `rows` (any sequence of rows), epoch after epoch.

    The order within an epoch is a permutation seeded by (seed, epoch), or the stored order when
    `shuffle` is false. The tail of an epoch shorter than a global batch is skipped, so every
    rank takes the same number of steps. `state_dict()` / `load_state_dict()` save and restore
    the position; it is counted in rows, so a run may even resume with another world size.
    """

    def __init__(self, rows: Sequence[Row], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        _check_rank(rank, world_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(rows) < batch_size * world_size:
            raise ValueError(f"{len(rows)} rows cannot fill one global batch of "
                             f"{batch_size} x {world_size} ranks")
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.rows_consumed = 0, 0
        self._order = self._epoch_order(0)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return len(self.rows) // self.global_batch_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.rows_consumed + self.global_batch_size > len(self.rows):
            self.epoch, self.rows_consumed = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        start = self.rows_consumed + self.rank * self.batch_size
        indices = self._order[start:start + self.batch_size]
        self.rows_consumed += self.global_batch_size
        return collate([self.rows[int(i)] for i in indices])

    def state_dict(self) -> dict[str, int | bool]:
        """The position (plus what must match for it to mean the same rows on resume)."""
        return {"epoch": self.epoch, "rows_consumed": self.rows_consumed, "seed": self.seed,
                "shuffle": self.shuffle, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Continue from `state`; raise if it was saved over other rows, seed or shuffling."""
        expected = {"seed": self.seed, "shuffle": self.shuffle, "num_rows": len(self.rows)}
        saved = {key: state[key] for key in expected}
        if saved != expected:
            raise ValueError(f"batch stream state was saved for {saved}, this stream has "
                             f"{expected}")
        self.epoch, self.rows_consumed = int(state["epoch"]), int(state["rows_consumed"])
        self._order = self._epoch_order(self.epoch)


class Positions:
    """Rows {"index": i}, i < n: lets BatchStream / eval_batches choose items of any shape
    (pairs, variable-length sequences) without reading them; the caller collates the items."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Row:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"index": np.asarray(i)}


def eval_batches(rows: Sequence[Row], batch_size: int, rank: int = 0, world_size: int = 1,
                 max_rows: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """One pass over the first `max_rows` rows (default: all) in stored order, in batches.

    Same layout as BatchStream without shuffling, but nothing is dropped: the last global batch
    may be short, and a rank whose slice of it is empty yields nothing for it. Ranks may thus
    take different numbers of batches, so reduce sums (loss, token counts) after the loop.
    """
    _check_rank(rank, world_size)
    num_rows = len(rows) if max_rows is None else min(max_rows, len(rows))
    for global_start in range(0, num_rows, batch_size * world_size):
        start = global_start + rank * batch_size
        indices = range(start, min(start + batch_size, num_rows))
        if indices:
            yield collate([rows[i] for i in indices])
