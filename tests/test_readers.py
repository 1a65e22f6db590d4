"""Streaming readers: every kind of broken input gives exact reasons and line numbers,
and the good records around it come out intact."""

import gzip
import json
import tempfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimind.data.readers import (
    PARQUET_BATCH_ROWS,
    RAW_PREVIEW_CHARS,
    RawRecord,
    ReadIssue,
    iter_records,
)

GOOD = [
    {"text": "plain ASCII line"},
    {"text": "中文内容，带标点。", "id": 7},
    {"messages": [{"role": "user", "content": "hi 😀"}, {"role": "assistant", "content": "ok"}]},
]


def encode(value: dict) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def read(path):
    """(records as [(line, value)], issues as [(line, reason)]) of one file."""
    items = list(iter_records(path))
    records = [(item.line, item.value) for item in items if isinstance(item, RawRecord)]
    issues = [(item.line, item.reason) for item in items if isinstance(item, ReadIssue)]
    return records, issues


def issues_of(path) -> list[ReadIssue]:
    return [item for item in iter_records(path) if isinstance(item, ReadIssue)]


def test_clean_jsonl_reads_every_record_with_its_line(tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_bytes(b"\n".join(encode(v) for v in GOOD) + b"\n")
    records, issues = read(path)
    assert records == [(1, GOOD[0]), (2, GOOD[1]), (3, GOOD[2])]
    assert issues == []
    assert all(item.path == str(path) for item in iter_records(path))


def test_json_suffix_is_read_as_json_lines_and_last_line_needs_no_newline(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b"\n".join(encode(v) for v in GOOD))
    assert read(path) == ([(1, GOOD[0]), (2, GOOD[1]), (3, GOOD[2])], [])


def test_invalid_json_line_is_reported_and_neighbours_survive(tmp_path):
    path = tmp_path / "bad_json.jsonl"
    path.write_bytes(encode(GOOD[0]) + b'\n{"text": "unterminated\n' + encode(GOOD[1]) + b"\n")
    records, issues = read(path)
    assert records == [(1, GOOD[0]), (3, GOOD[1])]
    assert issues == [(2, "invalid_json")]
    issue = issues_of(path)[0]
    assert "Unterminated string" in issue.detail
    assert issue.raw == '{"text": "unterminated'


def test_json_values_that_are_not_objects(tmp_path):
    path = tmp_path / "not_objects.jsonl"
    path.write_bytes(b'[1, 2]\n"just a string"\n42\nnull\n' + encode(GOOD[0]) + b"\n")
    records, issues = read(path)
    assert records == [(5, GOOD[0])]
    assert issues == [(1, "not_an_object"), (2, "not_an_object"), (3, "not_an_object"),
                      (4, "not_an_object")]
    assert "got list" in issues_of(path)[0].detail


def test_invalid_utf8_line_is_reported_and_other_lines_still_read(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(encode(GOOD[0]) + b'\n{"text": "caf\xe9"}\n' + encode(GOOD[1]) + b"\n")
    records, issues = read(path)
    assert records == [(1, GOOD[0]), (3, GOOD[1])]
    assert issues == [(2, "invalid_utf8")]
    issue = issues_of(path)[0]
    assert "byte offset 13" in issue.detail
    assert issue.raw == '{"text": "caf\ufffd"}'


def test_lone_surrogate_escape_is_invalid_utf8_but_a_valid_pair_is_fine(tmp_path):
    path = tmp_path / "surrogates.jsonl"
    path.write_bytes(b'{"text": "bad \\ud800 half"}\n{"text": "emoji \\ud83d\\ude00"}\n')
    records, issues = read(path)
    assert records == [(2, {"text": "emoji 😀"})]
    assert issues == [(1, "invalid_utf8")]


def test_utf8_bom_at_file_start_is_stripped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + encode(GOOD[1]) + b"\n" + encode(GOOD[0]) + b"\n")
    assert read(path) == ([(1, GOOD[1]), (2, GOOD[0])], [])


def test_crlf_line_endings_read_cleanly(tmp_path):
    path = tmp_path / "windows.jsonl"
    value_with_escaped_crlf = {"text": "line one\r\nline two"}
    lines = [encode(GOOD[0]), encode(value_with_escaped_crlf), encode(GOOD[1])]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    assert read(path) == ([(1, GOOD[0]), (2, value_with_escaped_crlf), (3, GOOD[1])], [])


def test_raw_nul_bytes_are_reported(tmp_path):
    path = tmp_path / "nul.jsonl"
    path.write_bytes(encode(GOOD[0]) + b'\n{"text": "a\x00b"}\n' + encode(GOOD[2]) + b"\n")
    records, issues = read(path)
    assert records == [(1, GOOD[0]), (3, GOOD[2])]
    assert issues == [(2, "nul_bytes")]
    assert "offset 11" in issues_of(path)[0].detail


def test_blank_lines_are_skipped_but_still_counted(tmp_path):
    path = tmp_path / "blanks.jsonl"
    path.write_bytes(b"\n" + encode(GOOD[0]) + b"\n   \n\t\r\n\r\n" + encode(GOOD[1]) + b"\n\n")
    assert read(path) == ([(2, GOOD[0]), (6, GOOD[1])], [])


def test_deeply_nested_json_is_invalid_not_a_crash(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"[" * 200_000 + b"\n" + encode(GOOD[0]) + b"\n")
    records, issues = read(path)
    assert records == [(2, GOOD[0])]
    assert issues == [(1, "invalid_json")]


def test_raw_text_of_an_issue_is_capped(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * 50_000 + b"\n")
    (issue,) = issues_of(path)
    assert issue.reason == "invalid_json"
    assert len(issue.raw) == RAW_PREVIEW_CHARS


# --- gzip ----------------------------------------------------------------------------------


def test_gzip_jsonl_reads_like_plain(tmp_path):
    path = tmp_path / "good.jsonl.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"\r\n".join(encode(v) for v in GOOD)))
    assert read(path) == ([(1, GOOD[0]), (2, GOOD[1]), (3, GOOD[2])], [])


def test_truncated_gzip_yields_every_complete_line_then_one_issue(tmp_path):
    values = [{"text": f"record {i} " + "lorem " * (i % 17), "i": i} for i in range(3000)]
    payload = b"\n".join(encode(v) for v in values) + b"\n"
    compressed = gzip.compress(payload)
    cut = compressed[: len(compressed) * 2 // 3]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(cut)

    # What a perfect reader could recover: the complete lines of the decompressible prefix.
    prefix = zlib.decompressobj(wbits=31).decompress(cut)
    complete = prefix.count(b"\n")
    assert 0 < complete < len(values)

    records, issues = read(path)
    assert records == [(i + 1, values[i]) for i in range(complete)]
    assert issues == [(complete + 1, "truncated_file")]


def test_corrupt_gzip_header_is_unreadable(tmp_path):
    path = tmp_path / "not_gzip.jsonl.gz"
    path.write_bytes(b"\n".join(encode(v) for v in GOOD))
    assert read(path) == ([], [(0, "unreadable_file")])
    assert "Not a gzipped file" in issues_of(path)[0].detail


def test_gzip_crc_damage_is_reported_after_the_lines_read(tmp_path):
    payload = b"\n".join(encode(v) for v in GOOD) + b"\n"
    damaged = bytearray(gzip.compress(payload))
    damaged[-8] ^= 0xFF  # the CRC32 in the trailer
    path = tmp_path / "crc.jsonl.gz"
    path.write_bytes(bytes(damaged))
    records, issues = read(path)
    assert records == [(1, GOOD[0]), (2, GOOD[1]), (3, GOOD[2])]
    assert issues == [(4, "unreadable_file")]
    assert "CRC check failed" in issues_of(path)[0].detail


# --- empty and unusable files ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("zero.jsonl", b""),
        ("zero.jsonl.gz", b""),
        ("nothing.jsonl.gz", gzip.compress(b"")),
        ("blank_lines.jsonl", b"\n \n\r\n"),
        ("zero.parquet", b""),
    ],
)
def test_empty_files_give_one_empty_file_issue(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert read(path) == ([], [(0, "empty_file")])


def test_parquet_without_rows_is_empty(tmp_path):
    path = tmp_path / "no_rows.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    assert read(path) == ([], [(0, "empty_file")])


def test_unsupported_suffix_is_a_configuration_error(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="data.csv"):
        iter_records(path)


def test_missing_file_raises_at_call_time(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        iter_records(tmp_path / "absent.jsonl")


def test_directory_named_like_a_data_file_is_unreadable(tmp_path):
    path = tmp_path / "folder.jsonl"
    path.mkdir()
    assert read(path) == ([], [(0, "unreadable_file")])


# --- Parquet -------------------------------------------------------------------------------


def multimodal_rows(count: int) -> list[dict]:
    conversation = [{"role": "user", "content": "<image>\n这是什么？"},
                    {"role": "assistant", "content": "一只猫。"}]
    return [
        {
            "conversations": json.dumps(conversation, ensure_ascii=False),
            "image_bytes": bytes([i % 256]) * (i % 5 + 1),
            "question_audios": [b"RIFF" + bytes([i % 256])],
            "tags": ["cat", f"n{i}"],
            "score": None if i % 3 else float(i),
        }
        for i in range(count)
    ]


def test_parquet_rows_stream_across_batches_with_types_kept(tmp_path):
    rows = multimodal_rows(PARQUET_BATCH_ROWS * 2 + 7)
    path = tmp_path / "vlm.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    records, issues = read(path)
    assert issues == []
    assert records == [(i + 1, row) for i, row in enumerate(rows)]
    assert isinstance(records[0][1]["image_bytes"], bytes)
    assert isinstance(records[0][1]["conversations"], str)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"PAR1 this is not parquet at all PAR1", id="garbage"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated_footer"),
    ],
)
def test_corrupt_parquet_file_is_unreadable(tmp_path, damage):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(multimodal_rows(50)), good)
    path = tmp_path / "bad.parquet"
    path.write_bytes(damage(good.read_bytes()))
    assert read(path) == ([], [(0, "unreadable_file")])


def test_parquet_damaged_in_the_middle_keeps_rows_before_the_damage(tmp_path):
    rows = [{"text": f"row {i} " + "x" * 40} for i in range(2 * PARQUET_BATCH_ROWS)]
    path = tmp_path / "middle.parquet"
    pq.write_table(
        pa.Table.from_pylist(rows), path, row_group_size=PARQUET_BATCH_ROWS, compression="snappy"
    )
    second_group = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = second_group.data_page_offset
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))

    records, issues = read(path)
    assert records == [(i + 1, row) for i, row in enumerate(rows[:PARQUET_BATCH_ROWS])]
    assert issues == [(PARQUET_BATCH_ROWS + 1, "unreadable_file")]


# --- property: arbitrary bytes never crash the reader and never cost a good record ---------

good_values = st.dictionaries(
    st.sampled_from(["text", "id", "meta"]),
    st.one_of(st.text(), st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=3)),
    min_size=1,
)
junk_lines = st.binary(max_size=40).map(lambda data: data.replace(b"\n", b" "))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(good_values, junk_lines), max_size=15), st.booleans())
def test_any_mix_of_good_and_junk_lines(lines, compress):
    payload = b"\n".join(encode(item) if isinstance(item, dict) else item for item in lines)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("mix.jsonl.gz" if compress else "mix.jsonl")
        path.write_bytes(gzip.compress(payload) if compress else payload)
        items = list(iter_records(path))
    records = {item.line: item.value for item in items if isinstance(item, RawRecord)}
    for line_no, item in enumerate(lines, start=1):
        if isinstance(item, dict):
            assert records[line_no] == item
    assert len(items) <= max(len(lines), 1)
