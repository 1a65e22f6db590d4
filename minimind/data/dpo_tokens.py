"""DPO tokens: each preference pair as two chat-templated sequences masked to the final answer.

Why: DPO compares how likely the policy finds the preferred ("chosen") and the dispreferred
("rejected") answer to one prompt, relative to a frozen reference. Those likelihoods are sums
over the answer only, so the loss mask covers exactly the final assistant message and the
`<|im_end|>` that ends it. Everything before it, earlier assistant turns of a multi-turn prompt
included, is context: unlike SFT, DPO trains the choice between two answers, not every turn.
The mask is the chat template's assistant mask (as for SFT) cut to its last span.

On disk: the SFT token layout (`tokens.bin`, `loss_mask.bin`, `offsets.npy`, `index.json`),
with the sequences of pair i stored as numbers 2i (chosen) and 2i + 1 (rejected).

Batches: B pairs become one forward pass over 2B right-padded sequences, the B chosen ones
first, so both sides go through the model together and split apart with `chunk(2)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from minimind.data.batches import BatchStream, Positions, eval_batches
from minimind.data.pretrain_tokens import (
    DOCUMENT_SEPARATOR,
    IGNORE_INDEX,
    TOKEN_DTYPE,
    Row,
    check_fits_token_dtype,
    read_index,
    write_index,
)
from minimind.data.sft_tokens import SFTDataset, encode_conversation, fit_to_length

if TYPE_CHECKING:  # keeps `import` of this module (and params validation) light
    from transformers import PreTrainedTokenizerBase

SIDES = ("chosen", "rejected")
FORMAT = "dpo-tokens"


class DPOTokensConfig(BaseModel):
    """How preference pairs are tokenized (part of the `tokenize` stage params)."""

    model_config = ConfigDict(extra="forbid")

    max_len: int = Field(
        default=512,
        ge=16,
        le=32768,
        description="Longest sequence kept per side, in tokens; a longer side is cut here, and "
        "the pair is dropped if either side keeps no answer token.",
    )


def final_span(mask: Sequence[int]) -> list[int]:
    """`mask` with only its last run of ones kept (all zeros stays all zeros).

    Applied to the assistant mask, that run is the final assistant message and its
    `<|im_end|>`: the template closes every assistant turn with unmasked tokens, so two turns
    never form one run.
    """
    mask = list(mask)
    if not any(mask):
        return mask
    end = len(mask) - mask[::-1].index(1)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [0] * start + [1] * (end - start) + [0] * (len(mask) - end)


def check_pair(chosen: list[dict], rejected: list[dict]) -> None:
    """Raise unless both sides end with an assistant answer after the same prompt turns."""
    for side, messages in zip(SIDES, (chosen, rejected), strict=True):
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"the {side} conversation must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected must share their prompt turns")


def encode_answer(tokenizer: PreTrainedTokenizerBase, messages: list[dict]
                  ) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and the mask of its final assistant answer (untruncated)."""
    ids, assistant_mask = encode_conversation(tokenizer, messages)
    return ids, final_span(assistant_mask)


def write_dpo_tokens(
    pairs: Iterable[tuple[list[dict], list[dict]]],
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    max_len: int = DPOTokensConfig().max_len,
) -> dict:
    """Tokenize (chosen, rejected) message lists into the DPO token files; return the stats.

    Streams pair by pair. A side longer than `max_len` is cut there (and after its last answer
    token); a pair is dropped (`dropped_too_long`) when either side then has no answer token,
    since half a pair teaches nothing. Raises ValueError on a malformed pair (see
    `check_pair`): the clean stage guarantees the format, so a bad pair here is a bug.
    """
    check_fits_token_dtype(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = dict.fromkeys(["pairs", "tokens", "answer_tokens", "truncated", "dropped_too_long"], 0)
    offsets = [0]
    with (
        open(out_dir / "tokens.bin", "wb") as tokens,
        open(out_dir / "loss_mask.bin", "wb") as loss_mask,
    ):
        for chosen, rejected in pairs:
            check_pair(chosen, rejected)
            sides = [encode_answer(tokenizer, messages) for messages in (chosen, rejected)]
            fitted = [fit_to_length(ids, mask, max_len) for ids, mask in sides]
            if fitted[0] is None or fitted[1] is None:
                stats["dropped_too_long"] += 1
                continue
            stats["truncated"] += any(len(ids) > max_len for ids, _ in sides)
            for ids, mask in fitted:
                np.asarray(ids, dtype=TOKEN_DTYPE).tofile(tokens)
                np.asarray(mask, dtype=np.uint8).tofile(loss_mask)
                offsets.append(offsets[-1] + len(ids))
                stats["answer_tokens"] += sum(mask)
    np.save(out_dir / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    stats["pairs"] = (len(offsets) - 1) // 2
    stats["tokens"] = offsets[-1]
    write_index(out_dir, {
        "format": FORMAT,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "vocab_size": len(tokenizer),
        "pad_id": tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR),
        "max_len": max_len,
        **stats,
    })
    return stats


class Pairs(Protocol):
    """Indexable preference pairs (rows with `{side}_input_ids` / `{side}_labels`)."""

    pad_id: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Row: ...


class DPODataset:
    """The tokenized pairs of one split.

    Row i: `chosen_input_ids`, `chosen_labels`, `rejected_input_ids`, `rejected_labels` (int64
    arrays; labels IGNORE_INDEX outside the final answer). `lengths` is (pairs, 2).
    """

    def __init__(self, tokens_dir: str | Path) -> None:
        if (found := read_index(Path(tokens_dir)).get("format")) != FORMAT:
            raise ValueError(f"{tokens_dir} holds {found!r} tokens, not {FORMAT!r}")
        self._sequences = SFTDataset(tokens_dir)  # the same files, one sequence per side
        self.pad_id: int = self._sequences.pad_id
        self.lengths = self._sequences.lengths.reshape(-1, len(SIDES))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> Row:
        row = {}
        for offset, side in enumerate(SIDES):
            input_ids, labels = self._sequences[len(SIDES) * i + offset]
            row[f"{side}_input_ids"], row[f"{side}_labels"] = input_ids, labels
        return row


def collate_pairs(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch B pairs as 2B right-padded sequences: rows 0..B-1 chosen, B..2B-1 rejected.

    Returns `input_ids` (pad_id after the end), `labels` (IGNORE_INDEX there) and
    `attention_mask` (1 on real tokens), padded to the longest sequence of the batch. Any other
    field of the rows (e.g. reference log-probs) is stacked as is into a (B, ...) tensor.
    """
    sequences = [(row[f"{side}_input_ids"], row[f"{side}_labels"])
                 for side in SIDES for row in rows]
    shape = (len(sequences), max(len(ids) for ids, _ in sequences))
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros(shape, dtype=np.int64)
    for r, (ids, row_labels) in enumerate(sequences):
        input_ids[r, :len(ids)] = ids
        labels[r, :len(ids)] = row_labels
        attention_mask[r, :len(ids)] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    sequence_keys = {f"{side}_{field}" for side in SIDES for field in ("input_ids", "labels")}
    for key in rows[0].keys() - sequence_keys:
        batch[key] = np.stack([row[key] for row in rows])
    return {key: torch.from_numpy(value) for key, value in batch.items()}


def _collate_chosen(pairs: Pairs, positions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return collate_pairs([pairs[i] for i in positions["index"].tolist()], pairs.pad_id)


class PairBatchStream:
    """BatchStream over preference pairs: same order, rank split and resume, batches of pairs.

    A batch of `batch_size` pairs is collated by `collate_pairs` (2 x batch_size sequences).
    """

    def __init__(self, pairs: Pairs, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        self.pairs = pairs
        self._positions = BatchStream(Positions(len(pairs)), batch_size, seed, rank,
                                      world_size, shuffle)

    @property
    def steps_per_epoch(self) -> int:
        return self._positions.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return _collate_chosen(self.pairs, next(self._positions))

    def state_dict(self) -> dict[str, int | bool]:
        return self._positions.state_dict()

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        self._positions.load_state_dict(state)


def eval_pair_batches(pairs: Pairs, batch_size: int, rank: int = 0, world_size: int = 1,
                      max_pairs: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """One pass over the first `max_pairs` pairs in stored order (see `eval_batches`)."""
    for positions in eval_batches(Positions(len(pairs)), batch_size, rank, world_size,
                                  max_pairs):
        yield _collate_chosen(pairs, positions)
