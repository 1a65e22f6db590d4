"""tokenizer: train the byte-level BPE tokenizer (MiniMind-3 special tokens, ChatML template),
or take an existing one (`tokenizer.pretrained`).

Reads the clean train split (pretrain text, plus SFT dialogue text if `tokenizer.include_sft`),
writes a Hugging Face tokenizer folder to models/tokenizer/ (loadable with
`AutoTokenizer.from_pretrained`) and bytes-per-token on held-out text per language to
metrics/tokenizer.json.

With `tokenizer.pretrained` (a hub id `<owner>/<repo>[@rev]`, or a folder such as upstream
MiniMind's `model/`), nothing is trained and the other tokenizer params are ignored: the
tokenizer is loaded (hub files via huggingface_hub, so $HF_ENDPOINT mirrors work; cached in
.cache/tokenizers), checked for every token and chat layout the pipeline needs
(minimind.tokenizer.check_pipeline_tokenizer), and saved as is; metrics say where it came from.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean")
TOKENIZER_DIR = Path("models/tokenizer")
METRICS = Path("metrics/tokenizer.json")
HUB_CACHE = Path(".cache/tokenizers")


def training_texts(clean_dir: Path, include_sft: bool, max_chars: int) -> Iterator[str]:
    """Pretrain text then SFT message contents from the train split, up to max_chars in all."""
    from minimind.data.shards import iter_rows, shard_paths

    def texts() -> Iterator[str]:
        for row in iter_rows(shard_paths(clean_dir / "pretrain", "train"), ["text"]):
            yield row["text"]
        if include_sft:
            for row in iter_rows(shard_paths(clean_dir / "sft", "train"), ["conversations"]):
                yield "\n".join(m["content"] for m in json.loads(row["conversations"]))

    used = 0
    for text in texts():
        if used >= max_chars:
            return
        yield text[: max_chars - used]
        used += len(text)


def held_out_by_lang(clean_dir: Path) -> dict[str, list[str]]:
    from minimind.data.shards import iter_rows, shard_paths

    by_lang: dict[str, list[str]] = defaultdict(list)
    for row in iter_rows(shard_paths(clean_dir / "pretrain", "val"), ["text", "lang"]):
        by_lang[row["lang"]].append(row["text"])
    return dict(by_lang)


def main(ctx: StageContext) -> None:
    from minimind.tokenizer import (
        bytes_per_token,
        check_pipeline_tokenizer,
        load_pretrained_tokenizer,
        train_tokenizer,
    )
    from pipelines.atomic import atomic_dir

    opts = ctx.params.tokenizer
    clean_dir = ctx.path(CLEAN_DIR)
    started = time.perf_counter()
    if opts.pretrained is None:
        tokenizer = train_tokenizer(
            training_texts(clean_dir, opts.include_sft, opts.max_train_chars),
            vocab_size=opts.vocab_size, min_frequency=opts.min_frequency,
        )
        source: dict[str, object] = {"source": "trained",
                                     "train_seconds": round(time.perf_counter() - started, 3)}
    else:
        try:
            tokenizer, origin = load_pretrained_tokenizer(opts.pretrained, ctx.root,
                                                          ctx.path(HUB_CACHE))
        except (OSError, RuntimeError, ValueError) as exc:
            raise SystemExit(f"tokenizer.pretrained: {exc}") from exc
        source = dict(origin)
    try:
        warnings = check_pipeline_tokenizer(tokenizer)
    except ValueError as exc:
        key = "tokenizer.pretrained" if opts.pretrained else "tokenizer"
        raise SystemExit(f"{key}: {exc}") from exc
    for warning in warnings:
        print(f"[tokenizer] warning: {warning}", flush=True)
    with atomic_dir(ctx.path(TOKENIZER_DIR)) as out_dir:
        tokenizer.save_pretrained(out_dir)
    held_out = held_out_by_lang(clean_dir)
    metrics = {
        **source,
        "vocab_size": len(tokenizer),
        "bytes_per_token": {lang: round(bytes_per_token(tokenizer, texts), 4)
                            for lang, texts in sorted(held_out.items())},
        "held_out_docs": {lang: len(texts) for lang, texts in sorted(held_out.items())},
    }
    ctx.write_metrics(METRICS, metrics)
    how = (f"trained in {metrics['train_seconds']:.1f}s" if opts.pretrained is None
           else f"loaded from {opts.pretrained}")
    print(f"[tokenizer] vocab {metrics['vocab_size']}, {how}; held-out bytes/token: "
          f"{metrics['bytes_per_token']}; saved to {TOKENIZER_DIR}", flush=True)


if __name__ == "__main__":
    run_stage("tokenizer", main, __doc__)
