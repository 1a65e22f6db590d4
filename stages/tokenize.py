"""tokenize: clean text -> token shards the training stages read by memmap.

Pretrain text becomes packed uint16 token shards with document boundaries
(data/tokens/pretrain/<split>/); SFT conversations are rendered with the chat template and
stored with assistant-only loss masks (data/tokens/sft/<split>/); preference pairs keep a mask
over each side's final answer (data/tokens/dpo/<split>/). metrics/tokenize.json holds
token counts and the pretrain corpus's unigram entropy, the baseline pretrain loss must beat.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean")
TOKENIZER_DIR = Path("models/tokenizer")
TOKENS_DIR = Path("data/tokens")
METRICS = Path("metrics/tokenize.json")
SPLITS = ("train", "val")


def pretrain_texts(clean_dir: Path, split: str) -> Iterator[str]:
    from minimind.data.shards import iter_rows, shard_paths

    for row in iter_rows(shard_paths(clean_dir / "pretrain", split), ["text"]):
        yield row["text"]


def conversations(clean_dir: Path, split: str) -> Iterator[list[dict]]:
    from minimind.data.shards import iter_rows, shard_paths

    for row in iter_rows(shard_paths(clean_dir / "sft", split), ["conversations"]):
        yield json.loads(row["conversations"])


def preference_pairs(clean_dir: Path, split: str) -> Iterator[tuple[list[dict], list[dict]]]:
    from minimind.data.shards import iter_rows, shard_paths

    for row in iter_rows(shard_paths(clean_dir / "dpo", split), ["chosen", "rejected"]):
        yield json.loads(row["chosen"]), json.loads(row["rejected"])


def main(ctx: StageContext) -> None:
    from transformers import AutoTokenizer

    from minimind.data.dpo_tokens import write_dpo_tokens
    from minimind.data.pretrain_tokens import unigram_entropy, write_pretrain_tokens
    from minimind.data.sft_tokens import write_sft_tokens
    from pipelines.atomic import atomic_dir

    opts = ctx.params.tokenize
    clean_dir = ctx.path(CLEAN_DIR)
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(TOKENIZER_DIR))
    metrics: dict = {"pretrain": {}, "sft": {}, "dpo": {}}
    with atomic_dir(ctx.path(TOKENS_DIR)) as out_dir:
        for split in SPLITS:
            metrics["pretrain"][split] = write_pretrain_tokens(
                pretrain_texts(clean_dir, split), tokenizer, out_dir / "pretrain" / split,
                shard_tokens=opts.pretrain.shard_tokens)
            metrics["sft"][split] = write_sft_tokens(
                conversations(clean_dir, split), tokenizer, out_dir / "sft" / split,
                max_len=opts.sft.max_len)
            metrics["dpo"][split] = write_dpo_tokens(
                preference_pairs(clean_dir, split), tokenizer, out_dir / "dpo" / split,
                max_len=opts.dpo.max_len)
        metrics["pretrain"]["unigram_entropy_nats"] = round(
            unigram_entropy(out_dir / "pretrain" / "train"), 4)
    ctx.write_metrics(METRICS, metrics)
    print(f"[tokenize] pretrain {metrics['pretrain']['train']['tokens']:,} train tokens "
          f"(unigram entropy {metrics['pretrain']['unigram_entropy_nats']} nats/token); "
          f"sft {metrics['sft']['train']['conversations']:,} train conversations; "
          f"written to {TOKENS_DIR}", flush=True)


if __name__ == "__main__":
    run_stage("tokenize", main, __doc__)
