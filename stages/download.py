"""download: fetch every `data.sources` entry into data/raw/<name>/ and write a manifest.

URIs: `hf://<owner>/<repo>/<path>[@rev]` (huggingface_hub; honours $HF_ENDPOINT),
`https://…` (resumable, retried, checksummed), `file://…` (a file or a directory of data
files; for a vlm source also the image files in that directory tree, which JSONL records
name by paths relative to their own file) and `builtin:<name>` (the offline embedded
corpora, built from PyPI packages; vlm and omni ones are written as Parquet with the media
bytes).
data/raw/manifest.json tells clean which files hold which kind of records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.stage import StageContext, run_stage

RAW_DIR = Path("data/raw")
DOWNLOAD_CACHE = Path(".cache/downloads")


def fetch_source(ctx: StageContext, source: Any, out_dir: Path
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fetch one source into out_dir/<source.name>/.

    Returns the manifest entries of its data files (what clean reads) and of the media files
    that those refer to by path (images next to a vlm JSONL; clean opens them through it).
    """
    from minimind.data import fetch

    opts = ctx.params.download
    target = out_dir / source.name
    cache = ctx.path(DOWNLOAD_CACHE)
    uri: str = source.uri
    media: list[Any] = []
    if uri.startswith("builtin:"):
        fetched = [build_builtin(uri.removeprefix("builtin:"), source.limit, opts.seed,
                                 target / source.name)]
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
            if source.kind == "vlm":  # JSONL image paths are relative to the folder tree
                media = [fetch.fetch_file(f, target / f.relative_to(src))
                         for f in fetch.data_files(src, fetch.IMAGE_SUFFIXES)]
        else:
            fetched = [fetch.fetch_file(src, target / src.name, sha256=source.sha256)]

    def entries(items: list[Any]) -> list[dict[str, Any]]:
        return [{"path": f.path.relative_to(out_dir).as_posix(), "sha256": f.sha256,
                 "bytes": f.bytes} for f in items]

    return entries(fetched), entries(media)


def build_builtin(name: str, limit: int | None, seed: int, stem: Path) -> Any:
    """Write an embedded corpus atomically and describe it like a download.

    Records go to `<stem>.jsonl`, except vlm and omni records, whose media bytes JSON cannot
    hold: those go to `<stem>.parquet` in MiniMind-V's / MiniMind-O's layout (`conversations`
    as a JSON string, media columns binary or list<binary>; see write_vlm_parquet).
    """
    from tqdm.auto import tqdm

    from minimind.data.builtin import get_builtin
    from minimind.data.fetch import Fetched, sha256_file
    from pipelines.atomic import atomic_file

    source = get_builtin(name)
    records = tqdm(source.build(limit, seed), desc=f"builtin:{name}", unit="rec", total=limit,
                   leave=False)
    if source.kind in ("vlm", "omni"):
        dest = stem.with_name(f"{stem.name}.parquet")
        with atomic_file(dest, "wb") as handle:
            write_vlm_parquet(records, handle)
    else:
        dest = stem.with_name(f"{stem.name}.jsonl")
        with atomic_file(dest, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Fetched(dest, sha256_file(dest), dest.stat().st_size)


MEDIA_COLUMNS = ("image_bytes", "question_audios", "answer_audio")
LIST_COLUMNS = ("question_audios",)  # always a list, even with one clip (MiniMind-O)
ANSWER_COLUMNS = ("answer_types", "answer_choices")  # evaluation fields: JSON text, as
# `conversations` is (minimind.data.records reads either a list or JSON text of one)


def write_vlm_parquet(records: Iterable[dict], handle: Any, row_group_rows: int = 256) -> int:
    """Write vlm/omni records (`conversations` list plus media bytes) as Parquet.

    Media columns are the `MEDIA_COLUMNS` any record holds, null where a record has none
    (an omni transcription shows no image); so are the evaluation fields (`ANSWER_COLUMNS`),
    stored as JSON strings like `conversations`. A column's type must be known before the first
    row is written, and one record with two images makes `image_bytes` a list for all, so the
    records are gathered first: builtin corpora are a few thousand small PNGs and short clips,
    tens to a few hundred MB at most.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"conversations": json.dumps(r["conversations"], ensure_ascii=False),
             **{key: r[key] for key in MEDIA_COLUMNS if key in r},
             **{key: json.dumps(r[key], ensure_ascii=False)
                for key in ANSWER_COLUMNS if r.get(key) is not None}} for r in records]
    fields = [("conversations", pa.string())]
    fields += [(key, pa.string()) for key in ANSWER_COLUMNS if any(key in row for row in rows)]
    for key in MEDIA_COLUMNS:
        values = [row.get(key) for row in rows]
        if all(value is None for value in values):
            continue
        several = key in LIST_COLUMNS or any(isinstance(value, list) for value in values)
        if several:
            for row, value in zip(rows, values, strict=True):
                row[key] = value if value is None or isinstance(value, list) else [value]
        fields.append((key, pa.list_(pa.binary()) if several else pa.binary()))
    schema = pa.schema(fields)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle,
                   row_group_size=row_group_rows, compression="zstd")
    return len(rows)


def main(ctx: StageContext) -> None:
    from pipelines.atomic import atomic_dir, write_json

    manifest: list[dict[str, Any]] = []
    with atomic_dir(ctx.path(RAW_DIR)) as out_dir:
        for source in ctx.params.data.sources:
            started = time.perf_counter()
            files, media = fetch_source(ctx, source, out_dir)
            size = sum(f["bytes"] for f in files + media)
            seconds = time.perf_counter() - started
            also = f" + {len(media)} media file(s)" if media else ""
            print(f"[download] {source.name}: {len(files)} file(s){also}, {size / 1e6:.2f} MB "
                  f"in {seconds:.1f}s ({size / 1e6 / max(seconds, 1e-9):.1f} MB/s)", flush=True)
            entry = {"name": source.name, "uri": source.uri, "kind": source.kind, "files": files}
            manifest.append({**entry, "media": media} if media else entry)
            ctx.run.log_metrics({f"bytes.{source.name}": size, f"files.{source.name}": len(files)})
        write_json(out_dir / "manifest.json", {"sources": manifest})


if __name__ == "__main__":
    run_stage("download", main, __doc__)
