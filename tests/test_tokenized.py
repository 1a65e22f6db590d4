"""Tokenized training data: pretrain shards and windows, SFT masks and packing, batch streams."""

from __future__ import annotations

import json
import random
from itertools import pairwise

import numpy as np
import pytest

from minimind.data.batches import BatchStream, collate, eval_batches
from minimind.data.pretrain_tokens import (
    IGNORE_INDEX,
    PretrainDataset,
    PretrainTokensConfig,
    write_pretrain_tokens,
)
from minimind.data.sft_tokens import (
    PAD_DOCUMENT_ID,
    PackedSFTDataset,
    SFTDataset,
    encode_conversation,
    plan_rows,
    tokenize_conversation,
    write_sft_tokens,
)
from minimind.tokenizer import decode_tool_fields, train_tokenizer

VOCABULARY = ("the weather in paris is sunny today and the river runs past the old town where "
              "people walk their dogs call the function with a city name to get a forecast 今天 "
              "天气 很好 我们 去 公园 散步 what is the capital of france it is paris")
WORDS = VOCABULARY.split()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [sentence(rng, rng.randint(5, 40)) for _ in range(300)]
    texts += ['{"name": "get_weather", "arguments": {"city": "Paris"}}'] * 20
    return train_tokenizer(texts, vocab_size=800, show_progress=False)


class WordIdTokenizer:
    """Encodes "11 12 13" as [11, 12, 13], so a test can read token ids off the text."""

    def __init__(self, vocab_size: int = 100) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def convert_tokens_to_ids(self, token: str) -> int:
        return 0

    def __call__(self, texts: list[str], add_special_tokens: bool) -> dict:
        return {"input_ids": [[int(word) for word in text.split()] for text in texts]}


# --- pretrain ---------------------------------------------------------------------------------


def test_pretrain_shards_round_trip(tokenizer, tmp_path):
    rng = random.Random(1)
    texts = [sentence(rng, rng.randint(1, 60)) for _ in range(50)]
    texts.insert(7, "")
    stats = write_pretrain_tokens(iter(texts), tokenizer, tmp_path, shard_tokens=1024)

    index = json.loads((tmp_path / "index.json").read_text())
    expected = [tokenizer.encode(text, add_special_tokens=False) + [0] for text in texts if text]
    assert stats == {"documents": 50, "tokens": sum(map(len, expected)), "empty_documents": 1,
                     "shards": len(index["shards"])}
    assert stats["shards"] >= 2
    assert index["dtype"] == "uint16" and index["separator_id"] == 0

    documents = []
    for n, shard in enumerate(index["shards"]):
        tokens = np.memmap(tmp_path / shard["tokens_file"], dtype=np.uint16, mode="r")
        boundaries = np.load(tmp_path / shard["boundaries_file"])
        assert boundaries.dtype == np.int64 and boundaries[0] == 0
        assert boundaries[-1] == len(tokens) == shard["tokens"]
        assert len(boundaries) - 1 == shard["documents"]
        # a shard closes after the document that fills it, so shards hold whole documents
        if n < len(index["shards"]) - 1:
            assert boundaries[-1] >= 1024 > boundaries[-2]
        documents += [tokens[a:b].tolist() for a, b in pairwise(boundaries)]
    assert documents == expected
    assert all(doc.count(0) == 1 and doc[-1] == 0 for doc in documents)


def test_pretrain_rejects_vocab_beyond_uint16(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_pretrain_tokens(["1 2"], WordIdTokenizer(vocab_size=70_000), tmp_path, 1024)


def test_pretrain_windows_hand_checked(tmp_path):
    # stream: 11 12 13 0 | 21 22 0 | 31 32 33 34 0 | 41 0  (14 tokens, separator 0)
    # shards of >= 4 tokens: [doc0], [doc1, doc2], [doc3] -> window 2 reads across a shard edge
    write_pretrain_tokens(["11 12 13", "21 22", "31 32 33 34", "41"], WordIdTokenizer(),
                          tmp_path, shard_tokens=4)
    windows = PretrainDataset(tmp_path, seq_len=5)
    assert len(windows) == 3  # windows start at 0, 4, 8; the next would need tokens 12..16
    x = IGNORE_INDEX
    expected = [
        # input_ids,          labels,                document_ids,    position_ids
        ([11, 12, 13, 0, 21], [x, 12, 13, 0, x], [0, 0, 0, 0, 1], [0, 1, 2, 3, 0]),
        ([21, 22, 0, 31, 32], [x, 22, 0, x, 32], [0, 0, 0, 1, 1], [0, 1, 2, 0, 1]),
        ([32, 33, 34, 0, 41], [x, 33, 34, 0, x], [0, 0, 0, 0, 1], [0, 1, 2, 3, 0]),
    ]
    for k, (input_ids, labels, document_ids, position_ids) in enumerate(expected):
        row = windows[k]
        assert row["input_ids"].tolist() == input_ids
        assert row["labels"].tolist() == labels
        assert row["document_ids"].tolist() == document_ids
        assert row["position_ids"].tolist() == position_ids
        assert all(value.dtype == np.int64 for value in row.values())
    with pytest.raises(IndexError):
        windows[3]


def test_pretrain_windows_predict_every_token_once(tokenizer, tmp_path):
    rng = random.Random(2)
    texts = [sentence(rng, rng.randint(1, 30)) for _ in range(40)]
    write_pretrain_tokens(texts, tokenizer, tmp_path, shard_tokens=256)
    stream = np.concatenate([tokenizer.encode(t, add_special_tokens=False) + [0] for t in texts])
    windows = PretrainDataset(tmp_path, seq_len=33)
    assert len(windows) == (len(stream) - 1) // 32
    # with the model's shift, row positions 1.. are the targets; neighbours share one token
    targets = np.concatenate([windows[k]["input_ids"][1:] for k in range(len(windows))])
    assert targets.tolist() == stream[1:len(targets) + 1].tolist()
    trained = sum(int((windows[k]["labels"] != IGNORE_INDEX).sum()) for k in range(len(windows)))
    document_starts_inside = sum(
        int((np.diff(windows[k]["document_ids"]) != 0).sum()) for k in range(len(windows)))
    assert trained == len(targets) - document_starts_inside
    assert document_starts_inside >= 30


def test_pretrain_too_few_tokens(tmp_path):
    write_pretrain_tokens(["1 2 3"], WordIdTokenizer(), tmp_path, shard_tokens=1024)
    with pytest.raises(ValueError, match="too few"):
        PretrainDataset(tmp_path, seq_len=8)


# --- SFT --------------------------------------------------------------------------------------

TOOLS = json.dumps([{"name": "get_weather", "description": "Forecast for a city",
                     "parameters": {"city": {"type": "string"}}}])
CALL = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant.", "tools": TOOLS},
    {"role": "user", "content": "What is the weather in Paris today?"},
    {"role": "assistant", "content": "", "reasoning_content": "Call the function with a city.",
     "tool_calls": CALL},
    {"role": "tool", "content": '{"forecast": "sunny"}'},
    {"role": "assistant", "content": "It is sunny in Paris today."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
EXPECTED_TRAINED_SPANS = [
    '<think>\nCall the function with a city.\n</think>\n\n<tool_call>\n'
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
    "It is sunny in Paris today.<|im_end|>",
    "The capital of France is Paris.<|im_end|>",
]


def trained_spans(tokenizer, input_ids, labels) -> list[str]:
    """Decode each maximal run of labelled tokens."""
    spans, run = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


def test_sft_labels_cover_exactly_the_assistant_turns(tokenizer):
    input_ids, labels = tokenize_conversation(tokenizer, CONVERSATION, max_len=4096)
    assert trained_spans(tokenizer, input_ids, labels) == EXPECTED_TRAINED_SPANS
    rendered = tokenizer.apply_chat_template(decode_tool_fields(CONVERSATION), tokenize=False)
    # everything is there up to the last trained token (the final "\n" is dropped)
    assert tokenizer.decode(input_ids) == rendered.removesuffix("\n")
    assert "<tools>" in rendered and "<tool_response>" in rendered
    assert labels[-1] == input_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_sft_truncation_keeps_only_conversations_with_a_trained_token(tokenizer):
    ids, mask = encode_conversation(tokenizer, CONVERSATION)
    first_trained = mask.index(1)
    assert tokenize_conversation(tokenizer, CONVERSATION, max_len=first_trained) is None
    cut = tokenize_conversation(tokenizer, CONVERSATION, max_len=first_trained + 1)
    assert cut == (ids[:first_trained + 1], [IGNORE_INDEX] * first_trained + [ids[first_trained]])
    middle = tokenize_conversation(tokenizer, CONVERSATION, max_len=len(ids) - 5)
    assert len(middle[0]) == len(ids) - 5 and middle[0] == ids[:len(ids) - 5]
    no_assistant = [{"role": "user", "content": "Hello?"}]
    assert tokenize_conversation(tokenizer, no_assistant, max_len=4096) is None


def make_conversations(count: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    conversations = []
    for _ in range(count):
        messages = [{"role": "system", "content": sentence(rng, 5)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": sentence(rng, rng.randint(3, 20))})
            messages.append({"role": "assistant", "content": sentence(rng, rng.randint(3, 40))})
        conversations.append(messages)
    return conversations


@pytest.fixture(scope="module")
def sft_dir(tokenizer, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sft")
    conversations = make_conversations(60, seed=3)
    conversations += [CONVERSATION, [{"role": "user", "content": "Hello?"}]]
    stats = write_sft_tokens(iter(conversations), tokenizer, out_dir, max_len=160)
    return out_dir, conversations, stats


def test_sft_tokens_round_trip(tokenizer, sft_dir):
    out_dir, conversations, stats = sft_dir
    expected = [tokenize_conversation(tokenizer, c, max_len=160) for c in conversations]
    kept = [e for e in expected if e is not None]
    full_lengths = [len(encode_conversation(tokenizer, c)[0]) for c in conversations]
    # CONVERSATION's first assistant token lies beyond 160 tokens (tool schema in the system turn)
    assert stats["conversations"] == len(kept) == len(conversations) - 2
    assert stats["dropped_no_assistant"] == 1 and stats["dropped_too_long"] == 1
    truncated = [n > 160 for n, e in zip(full_lengths, expected, strict=True) if e is not None]
    assert stats["truncated"] == sum(truncated) > 0
    assert stats["tokens"] == sum(len(ids) for ids, _ in kept)
    assert stats["trained_tokens"] == sum(sum(x != IGNORE_INDEX for x in lb) for _, lb in kept)

    dataset = SFTDataset(out_dir)
    assert len(dataset) == len(kept)
    for i, (ids, labels) in enumerate(kept):
        input_ids, stored_labels = dataset[i]
        assert input_ids.dtype == stored_labels.dtype == np.int64
        assert input_ids.tolist() == ids and stored_labels.tolist() == labels


# --- packing ----------------------------------------------------------------------------------


def test_plan_rows_realistic_length_mix():
    rng = np.random.default_rng(4)
    # SFT-like: mostly a few hundred tokens, a long tail up to the row length
    lengths = np.clip(rng.lognormal(np.log(180), 0.8, size=3000), 8, 1024).astype(int)
    rows = plan_rows(lengths, seq_len=1024)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert max(sum(lengths[i] for i in row) for row in rows) <= 1024
    share = lengths.sum() / (len(rows) * 1024)
    assert share > 0.95, share
    assert plan_rows(lengths, seq_len=1024) == rows  # deterministic
    with pytest.raises(ValueError, match="does not fit"):
        plan_rows([10, 1025], seq_len=1024)


def test_packed_rows_keep_conversations_whole_and_masked(sft_dir):
    out_dir, _, _ = sft_dir
    conversations = SFTDataset(out_dir)
    packed = PackedSFTDataset(conversations, seq_len=256)
    assert sorted(i for row in packed.rows for i in row) == list(range(len(conversations)))
    assert packed.useful_token_share == pytest.approx(
        conversations.lengths.sum() / (len(packed) * 256))
    assert packed.useful_token_share > 0.8
    for r in range(len(packed)):
        row = packed[r]
        documents, positions = row["document_ids"], row["position_ids"]
        start = 0
        for document, item in enumerate(packed.rows[r]):
            input_ids, labels = conversations[item]
            span = slice(start, start + len(input_ids))
            assert (documents[span] == document).all()
            assert positions[span].tolist() == list(range(len(input_ids)))
            assert row["input_ids"][span].tolist() == input_ids.tolist()
            assert row["labels"][span].tolist() == labels.tolist()
            start = span.stop
        padding = slice(start, 256)
        assert (documents[padding] == PAD_DOCUMENT_ID).all()
        assert (row["labels"][padding] == IGNORE_INDEX).all()
        assert (row["input_ids"][padding] == conversations.pad_id).all()


# --- batches ----------------------------------------------------------------------------------


def numbered_rows(count: int) -> list[dict[str, np.ndarray]]:
    """Rows whose every field is the row's own index, so a batch shows which rows it holds."""
    return [{key: np.full(3, i, dtype=np.int64) for key in ("input_ids", "labels")}
            for i in range(count)]


def row_numbers(batch) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def take(stream: BatchStream, steps: int) -> list[list[int]]:
    return [row_numbers(next(stream)) for _ in range(steps)]


def test_collate_stacks_int64():
    batch = collate(numbered_rows(4)[1:3])
    assert batch["labels"].dtype == batch["input_ids"].dtype
    assert str(batch["input_ids"].dtype) == "torch.int64"
    assert batch["input_ids"].tolist() == [[1, 1, 1], [2, 2, 2]]


def test_batch_stream_is_deterministic_and_covers_each_epoch():
    rows = numbered_rows(24)
    first = take(BatchStream(rows, batch_size=4, seed=7), 12)
    assert take(BatchStream(rows, batch_size=4, seed=7), 12) == first
    assert take(BatchStream(rows, batch_size=4, seed=8), 12) != first
    epoch0, epoch1 = first[:6], first[6:]
    assert sorted(sum(epoch0, [])) == sorted(sum(epoch1, [])) == list(range(24))
    assert epoch0 != epoch1
    in_order = take(BatchStream(rows, batch_size=5, seed=7, shuffle=False), 5)
    # 24 rows = 4 batches of 5 + a skipped tail of 4; then the next epoch starts over
    assert in_order == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14],
                        [15, 16, 17, 18, 19], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("taken", [3, 5, 9])
def test_batch_stream_resumes_exactly(taken):
    rows = numbered_rows(23)
    original = BatchStream(rows, batch_size=4, seed=11)
    take(original, taken)
    state = original.state_dict()
    continued = take(original, 8)  # crosses at least one epoch boundary (5 steps per epoch)

    resumed = BatchStream(rows, batch_size=4, seed=11)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip
    assert take(resumed, 8) == continued

    with pytest.raises(ValueError, match="saved for"):
        BatchStream(rows, batch_size=4, seed=12).load_state_dict(state)


def test_ranks_split_the_single_rank_global_batch():
    rows = numbered_rows(30)
    single = take(BatchStream(rows, batch_size=6, seed=5), 12)
    ranks = [BatchStream(rows, batch_size=3, seed=5, rank=r, world_size=2) for r in range(2)]
    for step in range(12):
        assert row_numbers(next(ranks[0])) + row_numbers(next(ranks[1])) == single[step]
    with pytest.raises(ValueError, match="rank"):
        BatchStream(rows, batch_size=3, seed=5, rank=2, world_size=2)


def test_eval_batches_fixed_order_nothing_dropped():
    rows = numbered_rows(11)
    assert [row_numbers(b) for b in eval_batches(rows, batch_size=4)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    by_rank = [[row_numbers(b) for b in eval_batches(rows, 2, rank=r, world_size=2)]
               for r in range(2)]
    assert by_rank == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [10]]]
    assert [row_numbers(b) for b in eval_batches(rows, 4, max_rows=6)] == [[0, 1, 2, 3], [4, 5]]


def test_config_defaults():
    assert PretrainTokensConfig().shard_tokens == 64 * 2**20
    with pytest.raises(ValueError):
        PretrainTokensConfig(shard_tokens=10)
