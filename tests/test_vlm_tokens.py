"""VLM sequences: `<image>` -> pad runs never under the loss, cuts never inside an image,
batches whose features follow the pad runs row by row, seeded and resumable streams."""

from pathlib import Path

import numpy as np
import pytest
import torch

from minimind.data.features import FeatureStore
from minimind.data.vlm_tokens import (
    IMAGE_PAD,
    Dropped,
    VLMBatchStream,
    VLMDataset,
    collate_vlm,
    encode_vlm,
    eval_vlm_batches,
)
from tests.vlm_data import (
    IMAGE_TOKENS,
    assistant,
    make_records,
    small_tokenizer,
    user,
    write_clean_vlm,
    write_feature_cache,
)

N = IMAGE_TOKENS


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    records, features = make_records(12, seed=0)
    cache = write_feature_cache(tmp_path_factory.mktemp("features"), features, shard_rows=10)
    return records, FeatureStore(cache)


def pad_runs(ids: np.ndarray, pad_id: int) -> list[tuple[int, int]]:
    """(start, length) of each run of pad tokens."""
    runs, start = [], None
    for i, token in enumerate([*ids.tolist(), -1]):
        if token == pad_id and start is None:
            start = i
        elif token != pad_id and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_each_marker_becomes_one_pad_run_outside_the_loss(tokenizer):
    messages = [user("<image>\n<image>\nWhat colour is the first circle?"), assistant("red"),
                user("What shape is it?"), assistant("circle")]
    example = encode_vlm(tokenizer, messages, ["a", "b"], N, max_len=200)
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    runs = pad_runs(example.input_ids, pad_id)
    assert [length for _, length in runs] == [N, N]
    assert runs[1][0] == runs[0][0] + N + 1  # the "\n" between the two markers
    assert example.images == ("a", "b")
    pads = example.input_ids == pad_id
    assert (example.labels[pads] == -100).all()
    trained = example.labels[example.labels != -100]
    assert tokenizer.decode(trained) == "red<|im_end|>circle<|im_end|>"


@pytest.mark.parametrize(("messages", "images", "message"), [
    ([user("<image>\nHi"), assistant("red")], ["a", "b"], "1 <image> markers but 2 images"),
    ([user("Hi"), assistant("<image> red")], [], "marker in a 'assistant' turn"),
    ([user(f"<image>{IMAGE_PAD}"), assistant("red")], ["a"], "holds <|image_pad|> itself"),
])
def test_malformed_records_are_errors(tokenizer, messages, images, message):
    with pytest.raises(ValueError, match=message):
        encode_vlm(tokenizer, messages, images, N, max_len=200)


def test_cuts_never_split_an_image(tokenizer):
    messages = [user("<image>\nWhat colour is the circle?"), assistant("red"),
                user("<image>\nAnd this one?"), assistant("blue")]
    full = encode_vlm(tokenizer, messages, ["a", "b"], N, max_len=500)
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    (first, _), (second, _) = pad_runs(full.input_ids, pad_id)
    # cut inside the second run: dropped, counted by the caller
    with pytest.raises(Dropped) as dropped:
        encode_vlm(tokenizer, messages, ["a", "b"], N, max_len=second + 2)
    assert dropped.value.reason == "dropped_cut_image"
    # cut just before the second run: the first turn trains, the second image is not used
    cut = encode_vlm(tokenizer, messages, ["a", "b"], N, max_len=second)
    assert cut.images == ("a",)
    assert tokenizer.decode(cut.labels[cut.labels != -100]) == "red<|im_end|>"
    # cut before the first answer: nothing can train
    with pytest.raises(Dropped) as dropped:
        encode_vlm(tokenizer, messages, ["a", "b"], N, max_len=first + N + 2)
    assert dropped.value.reason == "dropped_too_long"


def test_dataset_reads_one_split_of_chosen_sources(tokenizer, data, tmp_path: Path):
    records, features = data
    write_clean_vlm(tmp_path, "train", records)
    vqa = VLMDataset.from_clean(tmp_path, "train", tokenizer, features, 200, ["vqa"])
    assert len(vqa) == sum(r["source"] == "vqa" for r in records) == 12
    assert vqa.stats["images"] == sum(len(r["images"]) for r in records if r["source"] == "vqa")
    both = VLMDataset.from_clean(tmp_path, "train", tokenizer, features, 200)
    assert len(both) == len(records)
    with pytest.raises(ValueError, match=r"no train records of sources \['qva'\] .*'vqa': 12"):
        VLMDataset.from_clean(tmp_path, "train", tokenizer, features, 200, ["qva"])
    with pytest.raises(FileNotFoundError, match="no val-"):
        VLMDataset.from_clean(tmp_path, "val", tokenizer, features, 200)
    missing = records[0]["images"][0]
    partial = FeatureStore(write_feature_cache(tmp_path / "partial", {
        sha: features[sha] for r in records for sha in r["images"] if sha != missing}))
    with pytest.raises(ValueError, match=r"record 0 \(captions\): image .* not in the feature"):
        VLMDataset.from_clean(tmp_path, "train", tokenizer, partial, 200)


def test_too_long_records_are_counted_not_kept(tokenizer, data):
    records, features = data
    lengths = sorted(len(e.input_ids) for e in VLMDataset.from_rows(records, tokenizer,
                                                                    features, max_len=500))
    dataset = VLMDataset.from_rows(records, tokenizer, features, max_len=lengths[8])
    assert dataset.stats["dropped_too_long"] == len(records) - len(dataset) > 0
    assert max(len(e.input_ids) for e in dataset) <= lengths[8]
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    first_run = pad_runs(dataset[0].input_ids, pad_id)[0][0]
    with pytest.raises(ValueError, match=r"no trainable records .*'dropped_cut_image': 24"):
        VLMDataset.from_rows(records, tokenizer, features, max_len=first_run + 2)


def test_batch_pads_to_the_longest_row_and_features_follow_the_pad_runs(tokenizer, data):
    records, features = data
    dataset = VLMDataset.from_rows(records, tokenizer, features, max_len=200)
    examples = [dataset[i] for i in (1, 5, 0, 3)]  # 1, 2, 1, 1 images (record 5: two)
    assert [len(e.images) for e in examples] == [1, 2, 1, 1]
    batch = collate_vlm(examples, features, dataset.pad_id)
    width = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, width)
    assert batch["attention_mask"].sum(1).tolist() == [len(e.input_ids) for e in examples]
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert batch["image_features"].dtype == torch.float32
    assert batch["image_features"].shape == (5, N, features.feature_dim)
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    run = 0
    for row, example in enumerate(examples):  # row-major: the k-th run gets features[k]
        for (_, length), sha in zip(pad_runs(batch["input_ids"][row].numpy(), pad_id),
                                    example.images, strict=True):
            assert length == N
            assert torch.equal(batch["image_features"][run],
                               torch.from_numpy(features[sha].astype(np.float32)))
            run += 1
    assert run == 5


def batch_ids(batch) -> list[tuple[int, ...]]:
    return [tuple(row[mask == 1].tolist())
            for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def test_stream_is_seeded_resumable_and_split_over_ranks(tokenizer, data):
    records, features = data
    dataset = VLMDataset.from_rows(records, tokenizer, features, max_len=200)
    stream = VLMBatchStream(dataset, 4, seed=7)
    first = [batch_ids(next(stream)) for _ in range(3)]
    again = VLMBatchStream(dataset, 4, seed=7)
    assert [batch_ids(next(again)) for _ in range(3)] == first
    state = stream.state_dict()
    expected = [batch_ids(next(stream)) for _ in range(5)]  # crosses into the next epoch
    resumed = VLMBatchStream(dataset, 4, seed=7)
    resumed.load_state_dict(state)
    assert [batch_ids(next(resumed)) for _ in range(5)] == expected
    one = batch_ids(next(VLMBatchStream(dataset, 4, seed=3)))
    ranks = [batch_ids(next(VLMBatchStream(dataset, 2, seed=3, rank=r, world_size=2)))
             for r in range(2)]
    assert ranks[0] + ranks[1] == one


def test_eval_batches_spread_over_the_set(tokenizer, data):
    records, features = data
    dataset = VLMDataset.from_rows(records, tokenizer, features, max_len=200)
    batches = list(eval_vlm_batches(dataset, 3, max_rows=7))
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 1]
    seen = [ids for b in batches for ids in batch_ids(b)]
    assert seen[0] == tuple(dataset[0].input_ids) and seen[-1] == tuple(dataset[23].input_ids)
