"""Training throughput of MiniMind presets: tokens/s in fp32, bf16 autocast and torch.compile,
and the share of useful (non-pad) tokens per packed SFT batch versus padding to max length.

    python bench/train_throughput.py                       # tiny + minimind2-small, all modes
    python bench/train_throughput.py --presets tiny --modes fp32 --steps 10
    python bench/train_throughput.py --sft-tokens data/tokens/sft/train --sft-seq-len 1024

Each measurement is a full optimizer step (forward, backward, AdamW) on random tokens, timed
after warm-up steps. Whether bf16 beats fp32 on a CPU depends on its bf16 matrix units.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from minimind.model import MiniMindForCausalLM, preset_config


def tokens_per_second(preset: str, mode: str, batch: int, seq_len: int, steps: int,
                      warmup: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset_config(preset, vocab_size=6400)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if mode == "compile" else model
    ids = torch.randint(0, 6400, (batch, seq_len), device=device)

    def step() -> None:
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * seq_len * steps / (time.perf_counter() - started)


def sft_useful_share(tokens_dir: Path, seq_len: int, batch: int) -> None:
    from minimind.data.batches import BatchStream
    from minimind.data.sft_tokens import PackedSFTDataset, SFTDataset

    conversations = SFTDataset(tokens_dir)
    packed = PackedSFTDataset(conversations, seq_len)
    stream = BatchStream(packed, batch, seed=0)
    shares = []
    for _ in range(min(200, stream.steps_per_epoch)):
        rows = next(stream)["document_ids"]
        shares.append(float((rows >= 0).float().mean()))
    lengths = np.asarray(conversations.lengths)
    padded = lengths.sum() / (len(lengths) * seq_len)
    print(f"SFT packing @ seq_len {seq_len}: {len(conversations)} conversations -> "
          f"{len(packed)} rows; useful tokens {packed.useful_token_share:.1%} overall, "
          f"per batch mean {np.mean(shares):.1%} (min {np.min(shares):.1%}); "
          f"padding every conversation to seq_len would give {padded:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "minimind2-small"])
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "compile"],
                        choices=["fp32", "bf16", "compile"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sft-tokens", type=Path, default=Path("data/tokens/sft/train"))
    parser.add_argument("--sft-seq-len", type=int, default=1024)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} x {args.seq_len} tokens")
    print(f"{'preset':20s} {'mode':8s} {'tokens/s':>10s}")
    for preset in args.presets:
        for mode in args.modes:
            rate = tokens_per_second(preset, mode, args.batch, args.seq_len, args.steps,
                                     args.warmup, device)
            print(f"{preset:20s} {mode:8s} {rate:10.0f}", flush=True)
    if (args.sft_tokens / "index.json").exists():
        sft_useful_share(args.sft_tokens, args.sft_seq_len, args.batch)
    else:
        print(f"(no SFT tokens at {args.sft_tokens}: run `dvc repro tokenize` for the packing "
              "figures)")


if __name__ == "__main__":
    main()
