"""Fetching raw data files by URI: https (resumable), the Hugging Face Hub, and local files.

Every fetch ends with the same guarantees: the file at `dest` is complete (written under a
temporary name and renamed), its sha256 is known, and if the caller pinned a sha256 a
mismatch is an error, never a silently different dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm.auto import tqdm

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class DownloadError(RuntimeError):
    """A fetch that cannot succeed (bad URL, 4xx, checksum mismatch, retries exhausted)."""


class _Retryable(Exception):
    """A transient failure: connection drop, timeout, 5xx, 429."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    bytes: int


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(origin: str, path: Path, expected: str | None) -> str:
    actual = sha256_file(path)
    if expected and actual != expected:
        raise DownloadError(f"{origin}: sha256 mismatch: expected {expected}, got {actual}")
    return actual


def _place(src: Path, dest: Path, origin: str, sha256: str | None, *, keep_src: bool) -> Fetched:
    """Verify `src` and put it at `dest` atomically (hard link when kept, rename otherwise)."""
    digest = _check_sha(origin, src, sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    if keep_src:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    else:
        shutil.move(src, tmp)
    os.replace(tmp, dest)
    return Fetched(dest, digest, dest.stat().st_size)


# -- https ------------------------------------------------------------------------------------
def fetch_url(url: str, dest: Path, *, cache_dir: Path, sha256: str | None = None,
              retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0,
              progress: bool = True) -> Fetched:
    """Download `url` to `dest`, resuming a partial download with HTTP Range requests.

    The partial file lives in `cache_dir` (outside any DVC output, so a killed stage resumes
    where it stopped). Transient failures are retried with exponential backoff; client errors
    (404, 403, ...) fail at once. With a pinned sha256, a finished download already in the
    cache is reused without touching the network.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()
    done, part = cache_dir / key, cache_dir / f"{key}.part"
    if sha256 and done.exists() and sha256_file(done) == sha256:
        return _place(done, dest, url, sha256, keep_src=True)
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout_s, progress)
            break
        except _Retryable as exc:
            if attempt == retries:
                message = f"{url}: giving up after {retries + 1} attempts: {exc}"
                raise DownloadError(message) from None
            delay = backoff_s * 2**attempt
            tqdm.write(f"{url}: {exc}; retrying in {delay:.1f}s ({attempt + 1}/{retries})")
            time.sleep(delay)
    try:
        _check_sha(url, part, sha256)
    except DownloadError:
        part.unlink(missing_ok=True)  # a corrupt partial must not be resumed next time
        raise
    os.replace(part, done)
    return _place(done, dest, url, sha256, keep_src=True)


def _fetch_once(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
            if response.status_code == 416 and have:
                return  # nothing left to fetch: the partial file is complete
            if response.status_code in RETRYABLE_STATUS:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
            resumed = response.status_code == 206
            if have and not resumed:
                have = 0  # the server ignored Range: start over
            length = response.headers.get("Content-Length")
            expected = have + int(length) if length is not None else None
            written = have
            with open(part, "ab" if resumed else "wb") as handle, tqdm(
                total=expected, initial=have, unit="B", unit_scale=True,
                desc=url.rsplit("/", 1)[-1][:40], disable=not progress, leave=False,
            ) as bar:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    handle.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None
    if expected is not None and written < expected:
        raise _Retryable(f"connection closed after {written} of {expected} bytes")


# -- Hugging Face Hub -------------------------------------------------------------------------
@dataclass(frozen=True)
class HubFile:
    repo_type: str
    repo_id: str
    filename: str
    revision: str | None


def parse_hf_uri(uri: str, default_repo_type: str = "dataset") -> HubFile:
    """`hf://[datasets/|models/|spaces/]<owner>/<repo>/<path>[@rev]` -> its parts."""
    body = uri.removeprefix("hf://")
    body, _, revision = body.partition("@")
    parts = body.split("/")
    repo_type = default_repo_type
    plural = {"datasets": "dataset", "models": "model", "spaces": "space"}
    if parts and parts[0] in plural:
        repo_type = plural[parts.pop(0)]
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{uri!r}: expected hf://<owner>/<repo>/<path>[@rev]")
    return HubFile(repo_type, "/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def fetch_hf(uri: str, dest: Path, *, cache_dir: Path, sha256: str | None = None,
             repo_type: str = "dataset") -> Fetched:
    """Download one file from the Hub (or the mirror in $HF_ENDPOINT) via huggingface_hub."""
    from huggingface_hub import hf_hub_download

    hub = parse_hf_uri(uri, repo_type)
    local = hf_hub_download(
        repo_id=hub.repo_id, filename=hub.filename, revision=hub.revision,
        repo_type=hub.repo_type, local_dir=cache_dir / hub.repo_type / hub.repo_id,
    )
    return _place(Path(local), dest, uri, sha256, keep_src=True)


# -- local files ------------------------------------------------------------------------------
def local_path(uri: str, root: Path) -> Path:
    """`file:///abs/path` or `file://relative/to/project` -> a path."""
    raw = uri.removeprefix("file://")
    path = Path(raw) if raw.startswith("/") else root / raw
    if not path.exists():
        raise DownloadError(f"{uri}: {path} does not exist")
    return path


def fetch_file(src: Path, dest: Path, *, sha256: str | None = None) -> Fetched:
    """Copy a local file (hashing it) under a temporary name, then rename."""
    tmp = dest.with_name(f".{dest.name}.copy")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, tmp)
    return _place(tmp, dest, src.as_uri(), sha256, keep_src=False)


def data_files(directory: Path, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[Path]:
    """The files under a directory whose names end with one of `suffixes` (any case), sorted."""
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.name.lower().endswith(suffixes))
