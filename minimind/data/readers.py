"""Streaming readers for raw JSONL / JSONL.gz / Parquet inputs.

Raw data is messy: a 9 GB JSONL file may hold a few lines of broken JSON, invalid UTF-8,
stray NUL bytes or a truncated gzip tail. A reader that raises on the first bad line would
throw away millions of good records; one that silently skips it hides data loss. So
`iter_records` yields either a `RawRecord` (a JSON object plus where it came from) or a
`ReadIssue` (where, a short snake_case reason, a human detail and the offending text), and
never raises for bad content. The caller decides what to do with issues (the clean stage
writes them to a rejects file).

Files are streamed: JSONL line by line in binary mode, Parquet batch by batch, so memory
stays flat whatever the file size.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

RAW_PREVIEW_CHARS = 2000  # offending text kept in a ReadIssue is capped at this many characters
PARQUET_BATCH_ROWS = 256  # small batches: multimodal rows can carry megabytes of media bytes

_UTF8_BOM = b"\xef\xbb\xbf"
# A JSON escape for a UTF-16 surrogate. Valid pairs decode to one character; a lone one
# decodes to a str that can never be written as UTF-8 (Parquet would fail much later).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class RawRecord:
    """One JSON object read from `path`; `line` is the 1-based JSONL line or Parquet row."""

    path: str
    line: int
    value: dict


@dataclass(frozen=True)
class ReadIssue:
    """A line, row or whole file that could not be read as a record.

    `line` is 0 for problems that concern the whole file; `raw` holds the offending text
    (decoded with replacement characters, capped at RAW_PREVIEW_CHARS) when there is any.
    """

    path: str
    line: int
    reason: str
    detail: str
    raw: str | None


def iter_records(path: str | Path) -> Iterator[RawRecord | ReadIssue]:
    """Stream the records of one raw file, reporting every unreadable part as a ReadIssue.

    Supported suffixes: `.jsonl`, `.json` (read as JSON lines), `.jsonl.gz`, `.json.gz`,
    `.parquet`. Another suffix raises ValueError and a missing file FileNotFoundError, both
    at call time: those are configuration mistakes, not bad data. A file that yields no
    record and no issue (0 bytes, a gzip of nothing, only blank lines, a Parquet file with
    no rows) yields a single `empty_file` issue at line 0.
    """
    path = Path(path)
    reader = _reader_for(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return _report_if_empty(path, reader(path))


def _reader_for(path: Path) -> Callable[[Path], Iterator[RawRecord | ReadIssue]]:
    name = path.name.lower()
    if name.endswith((".jsonl.gz", ".json.gz")):
        return partial(_iter_jsonl, opener=gzip.open)
    if name.endswith((".jsonl", ".json")):
        return partial(_iter_jsonl, opener=partial(open, mode="rb"))
    if name.endswith(".parquet"):
        return _iter_parquet
    raise ValueError(
        f"{path}: unsupported file type; expected .jsonl, .json, .jsonl.gz, .json.gz or .parquet"
    )


def _report_if_empty(
    path: Path, items: Iterator[RawRecord | ReadIssue]
) -> Iterator[RawRecord | ReadIssue]:
    produced_anything = False
    for item in items:
        produced_anything = True
        yield item
    if not produced_anything:
        yield ReadIssue(str(path), 0, "empty_file", "the file holds no records", None)


# --- JSON lines ------------------------------------------------------------------------


def _iter_jsonl(
    path: Path, opener: Callable[[Path], BinaryIO]
) -> Iterator[RawRecord | ReadIssue]:
    try:
        stream = opener(path)
    except OSError as err:
        yield ReadIssue(str(path), 0, "unreadable_file", f"cannot open: {err}", None)
        return
    with stream:
        yield from _iter_json_lines(path, stream)


def _iter_json_lines(path: Path, stream: BinaryIO) -> Iterator[RawRecord | ReadIssue]:
    """Parse a binary stream of JSON lines; decompression errors end it with one issue."""
    line_no = 0
    lines = iter(stream)
    while True:
        try:
            raw_line = next(lines)
        except StopIteration:
            return
        except EOFError as err:
            yield ReadIssue(
                str(path), line_no + 1, "truncated_file",
                f"compressed stream cut short while reading line {line_no + 1}: {err}", None,
            )
            return
        except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            where = 0 if line_no == 0 else line_no + 1
            yield ReadIssue(str(path), where, "unreadable_file", f"corrupt data: {err}", None)
            return
        line_no += 1
        item = _parse_line(str(path), line_no, raw_line)
        if item is not None:
            yield item


def _parse_line(path: str, line_no: int, raw_line: bytes) -> RawRecord | ReadIssue | None:
    """Turn one raw line into a record or an issue; None for a blank line."""
    line = raw_line.removeprefix(_UTF8_BOM).rstrip(b"\r\n")
    if not line.strip():
        return None
    if b"\x00" in line:
        return _issue(path, line_no, "nul_bytes", f"raw NUL byte at offset {line.index(0)}", line)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return _issue(path, line_no, "invalid_utf8", f"byte offset {err.start}: {err.reason}", line)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return _issue(path, line_no, "invalid_json", str(err), line)
    except RecursionError:
        return _issue(path, line_no, "invalid_json", "nested too deeply to parse", line)
    if not isinstance(value, dict):
        kind = type(value).__name__
        return _issue(path, line_no, "not_an_object", f"expected a JSON object, got {kind}", line)
    if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(value):
        detail = "a \\u escape decodes to a lone UTF-16 surrogate, which is not valid UTF-8"
        return _issue(path, line_no, "invalid_utf8", detail, line)
    return RawRecord(path, line_no, value)


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _issue(path: str, line_no: int, reason: str, detail: str, line: bytes) -> ReadIssue:
    preview = line[: RAW_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
    return ReadIssue(path, line_no, reason, detail, preview[:RAW_PREVIEW_CHARS])


# --- Parquet ---------------------------------------------------------------------------


def _iter_parquet(path: Path) -> Iterator[RawRecord | ReadIssue]:
    """Yield Parquet rows as dicts; binary columns stay bytes, nested columns lists/dicts."""
    import pyarrow as pa  # imported here: ~0.2 s that JSONL-only runs and --help never need
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        return  # iter_records reports empty_file
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        detail = f"not a readable Parquet file: {err}"
        yield ReadIssue(str(path), 0, "unreadable_file", detail, None)
        return
    with parquet:
        row_no = 0
        batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        while True:
            try:
                batch = next(batches, None)
                rows = [] if batch is None else batch.to_pylist()
            except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
                detail = f"Parquet data unreadable from row {row_no + 1}: {err}"
                yield ReadIssue(str(path), row_no + 1, "unreadable_file", detail, None)
                return
            if batch is None:
                return
            for row in rows:
                row_no += 1
                yield RawRecord(str(path), row_no, row)
