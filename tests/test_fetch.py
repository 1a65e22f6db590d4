"""download's fetchers against a loopback web host / hub: resume, retry, checksum, atomicity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from minimind.data.fetch import (
    DownloadError,
    fetch_file,
    fetch_hf,
    fetch_url,
    local_path,
    parse_hf_uri,
)

BODY = b"".join(b'{"text": "line %d of a real enough corpus"}\n' % i for i in range(20_000))
SHA = hashlib.sha256(BODY).hexdigest()


def test_plain_download_is_complete_and_hashed(loopback, tmp_path: Path) -> None:
    loopback.files["/data.jsonl"] = BODY
    got = fetch_url(f"{loopback.url}/data.jsonl", tmp_path / "out" / "data.jsonl",
                    cache_dir=tmp_path / "cache", sha256=SHA, progress=False)
    assert got.path.read_bytes() == BODY and got.sha256 == SHA and got.bytes == len(BODY)


def test_dropped_connection_resumes_with_range(loopback, tmp_path: Path) -> None:
    loopback.files["/data.jsonl"] = BODY
    loopback.faults["/data.jsonl"] = ["drop"]
    got = fetch_url(f"{loopback.url}/data.jsonl", tmp_path / "data.jsonl",
                    cache_dir=tmp_path / "cache", sha256=SHA, backoff_s=0.01, progress=False)
    assert got.path.read_bytes() == BODY
    first, second = loopback.hits("/data.jsonl")
    assert "Range" not in first.headers
    resumed_from = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from < len(BODY)  # the second request asked only for the missing tail


def test_partial_file_from_a_killed_run_is_resumed(loopback, tmp_path: Path) -> None:
    loopback.files["/data.jsonl"] = BODY
    url = f"{loopback.url}/data.jsonl"
    cache = tmp_path / "cache"
    cache.mkdir()
    key = hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()
    (cache / f"{key}.part").write_bytes(BODY[:12345])
    got = fetch_url(url, tmp_path / "data.jsonl", cache_dir=cache, sha256=SHA, progress=False)
    assert got.path.read_bytes() == BODY
    assert loopback.hits("/data.jsonl")[0].headers["Range"] == "bytes=12345-"


def test_transient_errors_are_retried_then_succeed(loopback, tmp_path: Path) -> None:
    loopback.files["/data.jsonl"] = BODY
    loopback.faults["/data.jsonl"] = [503, 500, 429]
    got = fetch_url(f"{loopback.url}/data.jsonl", tmp_path / "data.jsonl",
                    cache_dir=tmp_path / "cache", retries=3, backoff_s=0.01, progress=False)
    assert got.sha256 == SHA
    assert len(loopback.hits("/data.jsonl")) == 4


def test_retries_exhausted_is_a_clear_error(loopback, tmp_path: Path) -> None:
    loopback.files["/data.jsonl"] = BODY
    loopback.faults["/data.jsonl"] = [503, 503, 503]
    with pytest.raises(DownloadError, match="giving up after 3 attempts: HTTP 503"):
        fetch_url(f"{loopback.url}/data.jsonl", tmp_path / "data.jsonl",
                  cache_dir=tmp_path / "cache", retries=2, backoff_s=0.01, progress=False)
    assert not (tmp_path / "data.jsonl").exists()


def test_client_error_fails_at_once(loopback, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_url(f"{loopback.url}/nope.jsonl", tmp_path / "nope.jsonl",
                  cache_dir=tmp_path / "cache", retries=5, backoff_s=0.01, progress=False)
    assert len(loopback.hits("/nope.jsonl")) == 1


def test_checksum_mismatch_leaves_nothing_behind(loopback, tmp_path: Path) -> None:
    loopback.files["/data.jsonl"] = BODY
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_url(f"{loopback.url}/data.jsonl", tmp_path / "data.jsonl",
                  cache_dir=tmp_path / "cache", sha256="0" * 64, progress=False)
    assert not (tmp_path / "data.jsonl").exists()
    assert not list((tmp_path / "cache").iterdir())  # the bad partial is not kept for resuming


def test_pinned_file_in_cache_needs_no_network(loopback, tmp_path: Path) -> None:
    loopback.files["/data.jsonl"] = BODY
    url = f"{loopback.url}/data.jsonl"
    fetch_url(url, tmp_path / "a.jsonl", cache_dir=tmp_path / "cache", sha256=SHA, progress=False)
    fetch_url(url, tmp_path / "b.jsonl", cache_dir=tmp_path / "cache", sha256=SHA, progress=False)
    assert len(loopback.hits("/data.jsonl")) == 1
    assert (tmp_path / "b.jsonl").read_bytes() == BODY


def test_hub_download_goes_through_hf_endpoint(loopback, tmp_path: Path, monkeypatch) -> None:
    loopback.files["/datasets/someone/corpus/resolve/v1/sub/pretrain.jsonl"] = BODY
    monkeypatch.setenv("HF_ENDPOINT", loopback.url)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", loopback.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        loopback.url + "/{repo_id}/resolve/{revision}/{filename}")
    got = fetch_hf("hf://someone/corpus/sub/pretrain.jsonl@v1", tmp_path / "pretrain.jsonl",
                   cache_dir=tmp_path / "cache", sha256=SHA)
    assert got.path.read_bytes() == BODY
    assert any(r.path.startswith("/datasets/someone/corpus/resolve/v1/") for r in loopback.requests)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_hf("hf://someone/corpus/sub/pretrain.jsonl@v1", tmp_path / "again.jsonl",
                 cache_dir=tmp_path / "cache", sha256="f" * 64)


@pytest.mark.parametrize(("uri", "expected"), [
    ("hf://jingyaogong/minimind_dataset/pretrain_hq.jsonl",
     ("dataset", "jingyaogong/minimind_dataset", "pretrain_hq.jsonl", None)),
    ("hf://datasets/a/b/dir/x.parquet@abc123", ("dataset", "a/b", "dir/x.parquet", "abc123")),
    ("hf://models/a/b/tokenizer.json@main", ("model", "a/b", "tokenizer.json", "main")),
])
def test_parse_hf_uri(uri: str, expected: tuple) -> None:
    hub = parse_hf_uri(uri)
    assert (hub.repo_type, hub.repo_id, hub.filename, hub.revision) == expected


def test_parse_hf_uri_rejects_missing_path() -> None:
    with pytest.raises(ValueError, match="expected hf://"):
        parse_hf_uri("hf://owner/repo")


def test_local_files(tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    src.write_bytes(BODY)
    assert local_path("file://src.jsonl", tmp_path) == src
    assert local_path(f"file://{src}", Path("/")) == src
    with pytest.raises(DownloadError, match="does not exist"):
        local_path("file://missing.jsonl", tmp_path)
    got = fetch_file(src, tmp_path / "raw" / "src.jsonl", sha256=SHA)
    assert got.path.read_bytes() == BODY
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_file(src, tmp_path / "raw" / "bad.jsonl", sha256="1" * 64)
    assert not (tmp_path / "raw" / "bad.jsonl").exists()
