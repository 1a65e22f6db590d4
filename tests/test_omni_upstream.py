"""MiniMind-O's own Parquet layout through clean: no `<audio>` marker in the text, one
`question_audios` clip per user turn (null for a text-only turn), `question_text`
transcripts in some exports, Mimi-code `answer_audios` / `ref_audios` and `spk_emb` beside
them. Well-formed rows are all kept, with one `<audio>` per matched user turn and the clips'
hashes in turn order, and reach tokenization; a row whose clip count disagrees with its user
turns is rejected naming both counts."""

from __future__ import annotations

import io
import json
import os
import wave
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

from minimind.data.audio import normalize_audio  # noqa: E402 - NUMBA_CACHE_DIR first
from minimind.data.cleaning import CleanConfig, clean_corpus  # noqa: E402
from minimind.data.records import SchemaError, match_turn_audios, validate_record  # noqa: E402
from minimind.data.shards import iter_rows, shard_paths  # noqa: E402
from minimind.data.vlm_tokens import AUDIO_PAD, IMAGE_PAD, VLMDataset, read_vlm_rows  # noqa: E402
from tests.vlm_data import small_tokenizer  # noqa: E402

N, D, DA = 3, 10, 6  # image tokens and feature widths of the fake feature caches


def wav16k(seconds: float, hz: float) -> bytes:
    """A 16 kHz mono PCM16 WAV tone, as MiniMind-O's question clips are."""
    t = np.arange(int(seconds * 16000)) / 16000
    pcm = (0.4 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


A, B, C, E = (wav16k(0.5, hz) for hz in (300, 450, 600, 750))
CODES = [list(range(i, i + 8 * 5)) for i in (0, 100)]  # 5 Mimi frames x 8 codebooks


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def write(path: Path, rows: list[dict], fields: list[tuple[str, pa.DataType]]) -> None:
    rows = [{**row, "conversations": json.dumps(row["conversations"], ensure_ascii=False)}
            for row in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)


def upstream_files(raw: Path) -> None:
    """Two files: an export with `question_text` and single `image_bytes`, and sft_a2a's own
    columns (no transcripts) with `image_bytes` as a list."""
    with_text = [
        {"conversations": [user("<image>\nWhat colour is the square?"), assistant("Red.")],
         "question_audios": [A], "question_text": ["What colour is the square?"],
         "image_bytes": png((200, 30, 30)), "answer_audios": [CODES[0]]},
        {"conversations": [user("Name a fruit."), assistant("An apple."),
                           user("And another one?"), assistant("A pear.")],
         "question_audios": [B, C], "question_text": ["Name a fruit.", "Another fruit?"],
         "answer_audios": CODES},
        {"conversations": [user("Hi there."), assistant("Hello."),  # typed, then spoken
                           user("What is two plus two?"), assistant("Four.")],
         "question_audios": [None, E], "question_text": [None, "What is two plus two?"]},
        {"conversations": [user("One."), assistant("1"), user("Two."), assistant("2")],
         "question_audios": [A, B, C], "question_text": ["One.", "Two.", "Three."]},  # bad
    ]
    write(raw / "sft_t.parquet", with_text, [
        ("conversations", pa.string()), ("question_audios", pa.list_(pa.binary())),
        ("question_text", pa.list_(pa.string())), ("image_bytes", pa.binary()),
        ("answer_audios", pa.list_(pa.list_(pa.int64())))])
    a2a = [
        {"conversations": [user("Tell me a colour."), assistant("Blue.")],
         "question_audios": [E], "answer_audios": [CODES[1]], "ref_audios": CODES[0],
         "spk_emb": [0.1] * 192},
        {"conversations": [user("<image>\nDescribe it."), assistant("A green square.")],
         "question_audios": [C], "image_bytes": [png((30, 200, 30))]},
    ]
    write(raw / "sft_a2a.parquet", a2a, [
        ("conversations", pa.string()), ("question_audios", pa.list_(pa.binary())),
        ("answer_audios", pa.list_(pa.list_(pa.int64()))), ("ref_audios", pa.list_(pa.int64())),
        ("spk_emb", pa.list_(pa.float32())), ("image_bytes", pa.list_(pa.binary()))])


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory) -> tuple[dict, Path]:
    raw = tmp_path_factory.mktemp("raw")
    upstream_files(raw)
    out = tmp_path_factory.mktemp("clean")
    files = [{"path": "sft_t.parquet"}, {"path": "sft_a2a.parquet"}]
    report = clean_corpus([{"name": "mmo", "kind": "omni", "files": files}], raw, out,
                          CleanConfig(val_fraction=0.0), progress=False)
    return report, out


def test_upstream_rows_get_one_marker_per_spoken_turn_and_clips_in_turn_order(cleaned):
    report, out = cleaned
    assert report["rejects_by_reason"] == {"audio_count_mismatch": 1}
    assert report["records_in"] == 6 and report["records_kept"] == 5
    counts = report["by_source"]["mmo"]
    assert (counts["omni.records_matched"], counts["omni.turns_matched"]) == (5, 6)
    assert (counts["omni.answer_codes_dropped"], counts["omni.ref_audios_dropped"],
            counts["omni.spk_emb_dropped"]) == (3, 1, 1)
    assert report["audio"]["stored"] == 4 and report["images"]["stored"] == 2
    sha = {clip: normalize_audio(clip).sha256 for clip in (A, B, C, E)}
    rows = {row["origin"]: row for row in iter_rows(
        shard_paths(out / "omni", "train"),
        ["origin", "conversations", "images", "question_audios", "question_text"])}
    assert set(rows) == {"sft_t.parquet:1", "sft_t.parquet:2", "sft_t.parquet:3",
                         "sft_a2a.parquet:1", "sft_a2a.parquet:2"}
    users = {origin: [m["content"] for m in json.loads(row["conversations"])
                      if m["role"] == "user"] for origin, row in rows.items()}
    # the transcript equals the text: the clip replaces it; otherwise it goes before the text
    assert users["sft_t.parquet:1"] == ["<image>\n<audio>"]
    assert users["sft_t.parquet:2"] == ["<audio>", "<audio>\nAnd another one?"]
    assert users["sft_t.parquet:3"] == ["Hi there.", "<audio>"]  # a null clip: typed turn
    assert users["sft_a2a.parquet:1"] == ["<audio>\nTell me a colour."]
    assert users["sft_a2a.parquet:2"] == ["<audio>\n<image>\nDescribe it."]
    assert {origin: row["question_audios"] for origin, row in rows.items()} == {
        "sft_t.parquet:1": [sha[A]], "sft_t.parquet:2": [sha[B], sha[C]],
        "sft_t.parquet:3": [sha[E]], "sft_a2a.parquet:1": [sha[E]],
        "sft_a2a.parquet:2": [sha[C]]}
    assert [len(rows[o]["images"]) for o in sorted(rows)] == [0, 1, 1, 0, 0]
    assert rows["sft_t.parquet:2"]["question_text"] == ["Name a fruit.", "Another fruit?"]
    assert rows["sft_t.parquet:3"]["question_text"] == ["What is two plus two?"]  # clips kept
    assert rows["sft_a2a.parquet:1"]["question_text"] is None


def test_a_clip_count_that_disagrees_with_the_user_turns_is_rejected_with_both(cleaned):
    _, out = cleaned
    rejected = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejected) == 1
    bad = rejected[0]
    assert (bad["reason"], bad["origin"]) == ("audio_count_mismatch", "sft_t.parquet:4")
    assert bad["detail"].startswith("3 question_audios for 2 user turn(s)")
    assert bad["record"]["question_audios"][0].startswith("<WAV 16000 Hz 1 ch 0.50 s")


class Clips:
    """A ragged audio feature cache with two tokens per clip."""

    feature_dim = DA

    def __contains__(self, sha: object) -> bool:
        return True

    def __getitem__(self, sha: str) -> np.ndarray:
        return np.zeros((2, DA), np.float16)

    def length(self, sha: str) -> int:
        return 2


class Images:
    num_tokens, feature_dim = N, D

    def __contains__(self, sha: object) -> bool:
        return True

    def __getitem__(self, sha: str) -> np.ndarray:
        return np.zeros((N, D), np.float16)


def test_the_clean_rows_tokenize_for_training(cleaned):
    _, out = cleaned
    rows = read_vlm_rows(out / "omni", "train")
    tokenizer = small_tokenizer()
    data = VLMDataset.from_rows(rows, tokenizer, Images(), 500, audio_features=Clips())
    assert data.stats["records"] == 5 and data.stats["audios"] == 6
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert sum(int((e.input_ids == audio_id).sum()) for e in data.examples) == 6 * 2
    assert sum(int((e.input_ids == image_id).sum()) for e in data.examples) == 2 * N


def test_matching_rule_on_records():
    record = validate_record("omni", {
        "conversations": [user("Q1"), assistant("A1"), user("Q2"), assistant("A2")],
        "question_audios": [b"x", b""], "question_text": ["Q1", "Q2"]})
    matched, turns = match_turn_audios(record)
    assert turns == 1 and matched["question_audios"] == [b"x"]
    assert [m["content"] for m in matched["conversations"]][::2] == ["<audio>", "Q2"]
    assert matched["question_text"] == ["Q1"]
    assert record["conversations"][0]["content"] == "Q1"  # the input is not changed
    marked = validate_record("omni", {"conversations": [user("<audio>\nQ"), assistant("A")],
                                      "question_audios": [b"x"]})
    assert match_turn_audios(marked) == (marked, 0)  # the marker layout is left as it is
    with pytest.raises(SchemaError, match="1 question_audios for 2 user turn"):
        match_turn_audios({**record, "question_audios": [b"x"], "question_text": None})
    with pytest.raises(SchemaError, match="question_text: 1 entries for 2 question_audios"):
        match_turn_audios({**record, "question_text": ["Q1"]})
    with pytest.raises(SchemaError, match=r"question_text\[0\]: expected a string"):
        match_turn_audios({**record, "question_text": [1, "Q2"]})
