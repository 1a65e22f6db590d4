"""SFT tokens: chat-templated conversations with assistant-only loss masks, packed into rows.

Why: supervised fine-tuning teaches the model to answer, not to imitate users, so only what the
assistant says (its reasoning, content and tool calls, plus the `<|im_end|>` that ends its turn)
is a prediction target; system prompts, tool schemas, user and tool turns and the role headers
are context. The chat template marks assistant spans with `{% generation %}`, so the mask comes
from the same template that serves the model, never from a second hand-written parser; a
template without such marks (upstream MiniMind's) has its ChatML assistant turns found instead.

On disk (one folder per split): `tokens.bin` (uint16, all conversations back to back),
`loss_mask.bin` (uint8, 1 = trained token, parallel to the tokens), `offsets.npy` (int64,
conversation i is [offsets[i], offsets[i+1])) and `index.json` with the counts.

Packing puts whole conversations side by side in rows of `seq_len` tokens instead of padding
each to the maximum length: each conversation keeps its own document id (attention stays inside
it) and restarts its position ids, and only the unused tail of a row is padding.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # keeps `import` of this module (and params validation) light
    from transformers import PreTrainedTokenizerBase

from minimind.data.pretrain_tokens import (
    DOCUMENT_SEPARATOR,
    IGNORE_INDEX,
    TOKEN_DTYPE,
    Row,
    check_fits_token_dtype,
    read_index,
    write_index,
)
from minimind.tokenizer import encode_chat

PAD_DOCUMENT_ID = -1  # document id of padding: attends to nothing the model should care about


class SFTTokensConfig(BaseModel):
    """How SFT conversations are tokenized (part of the `tokenize` stage params)."""

    model_config = ConfigDict(extra="forbid")

    max_len: int = Field(
        default=512,
        ge=16,
        le=32768,
        description="Longest conversation kept, in tokens; longer ones are cut here if an "
        "assistant token survives, else dropped. Must not exceed the SFT seq_len.",
    )


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict]
                        ) -> tuple[list[int], list[int]]:
    """Render `messages` with the chat template; return token ids and the assistant mask.

    `tools` / `tool_calls` given as JSON strings (the data format) are decoded first so they
    render in the template's canonical form. A template without `{% generation %}` blocks (an
    upstream MiniMind tokenizer's) gets its assistant spans from the ChatML markers instead
    (`minimind.tokenizer.encode_chat`).
    """
    return encode_chat(tokenizer, messages)


def fit_to_length(ids: list[int], mask: list[int], max_len: int
                  ) -> tuple[list[int], list[int]] | None:
    """Cut a conversation to `max_len` tokens; None when no trained token survives.

    Tokens after the last trained one are dropped too: under causal attention they influence no
    loss, so they would only take room in a packed row.
    """
    ids, mask = ids[:max_len], mask[:max_len]
    if not any(mask):
        return None
    end = len(mask) - mask[::-1].index(1)
    return ids[:end], mask[:end]


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict],
                          max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels (IGNORE_INDEX except on assistant tokens) of one conversation.

    Labels follow the Hugging Face convention: aligned with the ids, shifted inside the model.
    Returns None when the conversation has no assistant token within its first `max_len`.
    """
    fitted = fit_to_length(*encode_conversation(tokenizer, messages), max_len)
    if fitted is None:
        return None
    ids, mask = fitted
    labels = [token if trained else IGNORE_INDEX for token, trained in zip(ids, mask, strict=True)]
    return ids, labels


def write_sft_tokens(
    conversations: Iterable[list[dict]],
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    max_len: int = SFTTokensConfig().max_len,
) -> dict:
    """Tokenize `conversations` into the SFT token files under `out_dir`; return the stats.

    Streams conversation by conversation (only the offsets, one int per conversation, stay in
    memory). Conversations without any assistant token, or whose assistant tokens all lie beyond
    `max_len`, are dropped and counted by reason. Writes nothing outside `out_dir`.
    """
    check_fits_token_dtype(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = dict.fromkeys(["conversations", "tokens", "trained_tokens", "truncated",
                           "dropped_no_assistant", "dropped_too_long"], 0)
    offsets = [0]
    with (
        open(out_dir / "tokens.bin", "wb") as tokens,
        open(out_dir / "loss_mask.bin", "wb") as loss_mask,
    ):
        for messages in conversations:
            ids, mask = encode_conversation(tokenizer, messages)
            fitted = fit_to_length(ids, mask, max_len)
            if fitted is None:
                stats["dropped_too_long" if any(mask) else "dropped_no_assistant"] += 1
                continue
            stats["truncated"] += len(ids) > max_len
            ids, mask = fitted
            np.asarray(ids, dtype=TOKEN_DTYPE).tofile(tokens)
            np.asarray(mask, dtype=np.uint8).tofile(loss_mask)
            offsets.append(offsets[-1] + len(ids))
            stats["trained_tokens"] += sum(mask)
    np.save(out_dir / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    stats["conversations"] = len(offsets) - 1
    stats["tokens"] = offsets[-1]
    write_index(out_dir, {
        "format": "sft-tokens",
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "vocab_size": len(tokenizer),
        "pad_id": tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR),
        "max_len": max_len,
        **stats,
    })
    return stats


class SFTDataset:
    """The tokenized conversations of one split: item i is (input_ids, labels), int64 arrays."""

    def __init__(self, tokens_dir: str | Path) -> None:
        tokens_dir = Path(tokens_dir)
        index = read_index(tokens_dir)
        self.pad_id: int = index["pad_id"]
        self._offsets = np.load(tokens_dir / "offsets.npy")
        self.lengths = np.diff(self._offsets)
        if len(self.lengths) == 0:
            raise ValueError(f"{tokens_dir} holds no conversations")
        self._tokens = np.memmap(tokens_dir / "tokens.bin", dtype=index["dtype"], mode="r")
        self._loss_mask = np.memmap(tokens_dir / "loss_mask.bin", dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(self._offsets[i], self._offsets[i + 1])
        input_ids = self._tokens[span].astype(np.int64)
        labels = np.where(self._loss_mask[span] == 1, input_ids, IGNORE_INDEX)
        return input_ids, labels


def plan_rows(lengths: Sequence[int] | np.ndarray, seq_len: int) -> list[list[int]]:
    """Group items (by index) into rows holding at most `seq_len` tokens each.

    Greedy best-fit decreasing: longest item first, each into the row with the least room that
    still fits it (ties: the oldest row), else into a new row. Deterministic, never splits an
    item, and typically leaves only a few percent of the rows empty.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and lengths.max() > seq_len:
        raise ValueError(f"an item of {lengths.max()} tokens does not fit seq_len={seq_len}; "
                         "tokenize with max_len <= seq_len")
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row index) of rows with free tokens, sorted
    for item in np.argsort(-lengths, kind="stable").tolist():
        length = int(lengths[item])
        slot = bisect.bisect_left(room, (length, -1))
        if slot == len(room):
            rows.append([])
            free, row = seq_len, len(rows) - 1
        else:
            free, row = room.pop(slot)
        rows[row].append(item)
        if free > length:
            bisect.insort(room, (free - length, row))
    return rows


class PackedSFTDataset:
    """Rows of `seq_len` tokens, each holding whole conversations of an SFTDataset.

    Row fields: `input_ids`, `labels`, `document_ids` (0, 1, ... per conversation; padding
    PAD_DOCUMENT_ID), `position_ids` (restart at 0 per conversation); padding has the pad token,
    label IGNORE_INDEX and position 0.
    """

    def __init__(self, conversations: SFTDataset, seq_len: int) -> None:
        self.conversations, self.seq_len = conversations, seq_len
        self.rows = plan_rows(conversations.lengths, seq_len)
        self.useful_tokens = int(conversations.lengths.sum())

    @property
    def useful_token_share(self) -> float:
        """Share of row tokens that are conversation tokens rather than padding."""
        return self.useful_tokens / (len(self.rows) * self.seq_len)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> Row:
        row = {
            "input_ids": np.full(self.seq_len, self.conversations.pad_id, dtype=np.int64),
            "labels": np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64),
            "document_ids": np.full(self.seq_len, PAD_DOCUMENT_ID, dtype=np.int64),
            "position_ids": np.zeros(self.seq_len, dtype=np.int64),
        }
        start = 0
        for document, item in enumerate(self.rows[r]):
            input_ids, labels = self.conversations[item]
            span = slice(start, start + len(input_ids))
            row["input_ids"][span] = input_ids
            row["labels"][span] = labels
            row["document_ids"][span] = document
            row["position_ids"][span] = np.arange(len(input_ids))
            start = span.stop
        return row
