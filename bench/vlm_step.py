"""VLM training-step time with cached image features vs with the vision encoder in the loop.

    python bench/vlm_step.py                          # tiny LLM, efficientnet-lite0, batch 16
    python bench/vlm_step.py --preset minimind2-small --encoder efficientnet-lite0 --steps 5

Both variants run the same optimizer step of phase-2 alignment (projector + LLM trainable,
encoder frozen) on the same scene images: `cached` reads the features from a FeatureStore
written beforehand (what the align stage does); `encoder` decodes the PNGs and runs the frozen
encoder inside every step (what a pipeline without a feature cache does). The ratio is how
much the cache saves per step; the cache itself costs one encoder pass per unique image.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from minimind.data.builtin.scenes import png_bytes, random_scene, render
from minimind.data.features import FeatureStore, write_features
from minimind.data.images import decode_image
from minimind.encoders import load_vision_encoder
from minimind.model import MiniMindForCausalLM, preset_config
from minimind.model.vlm import MiniMindVLM

VOCAB = 6400
IMAGE_TOKEN_ID = 7  # any id: the benchmark builds its own token rows
ANSWER_TOKENS = 6  # supervised tokens of a scene answer turn
TEXT_TOKENS = 32  # prompt + answer tokens per row besides the image's pad tokens


def timed(step: Callable[[], None], steps: int, warmup: int) -> float:
    """Mean seconds per call after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)

    rng = random.Random(0)
    images = [png_bytes(render(random_scene(rng))) for _ in range(args.batch)]
    hashes = [f"{i:064x}" for i in range(args.batch)]
    encoder = load_vision_encoder(args.encoder)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_features(zip(hashes, images, strict=True), encoder, Path(tmp), args.batch,
                       progress=False)
        cache_seconds = time.perf_counter() - started
        store = FeatureStore(tmp)

        llm = MiniMindForCausalLM(preset_config(args.preset, vocab_size=VOCAB))
        model = MiniMindVLM.from_language_model(llm, store.feature_dim, store.num_tokens,
                                                IMAGE_TOKEN_ID)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        text = torch.randint(8, VOCAB, (args.batch, TEXT_TOKENS))
        pads = torch.full((args.batch, store.num_tokens), IMAGE_TOKEN_ID)
        input_ids = torch.cat([pads, text], dim=1)
        labels = torch.cat([torch.full_like(pads, -100), text], dim=1)

        # a scene question supervises its short answer only
        answer_labels = labels.clone()
        answer_labels[:, :-ANSWER_TOKENS] = -100

        def train_step(features: torch.Tensor, labels: torch.Tensor = labels,
                       loss_only: bool = False) -> None:
            loss = model(input_ids=input_ids, labels=labels, image_features=features,
                         loss_only=loss_only).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def cached_step() -> None:
            train_step(torch.from_numpy(np.stack([store[h] for h in hashes])).float())

        def encoder_step() -> None:
            train_step(encoder.encode([decode_image(data) for data in images]))

        cached = timed(cached_step, args.steps, args.warmup)
        in_loop = timed(encoder_step, args.steps, args.warmup)
        cached_features = torch.from_numpy(np.stack([store[h] for h in hashes])).float()
        full_head = timed(lambda: train_step(cached_features, answer_labels), args.steps,
                          args.warmup)
        answer_head = timed(lambda: train_step(cached_features, answer_labels, True),
                            args.steps, args.warmup)

    print(f"preset {args.preset}, encoder {args.encoder} ({store.num_tokens} tokens x "
          f"{store.feature_dim}), batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"feature cache for {args.batch} images: {cache_seconds:.2f} s (once)")
    print(f"step with cached features: {cached * 1000:8.1f} ms")
    print(f"step with encoder in loop: {in_loop * 1000:8.1f} ms")
    print(f"ratio (encoder / cached):  {in_loop / cached:8.2f}x")
    print(f"{ANSWER_TOKENS}-token answers, head on every position: {full_head * 1000:8.1f} ms")
    print(f"{ANSWER_TOKENS}-token answers, loss_only head:         {answer_head * 1000:8.1f} ms "
          f"({full_head / answer_head:.2f}x faster)")


if __name__ == "__main__":
    main()
