"""How fast the VLM learns each VQA question type: first-answer-token accuracy while training.

    python bench/vqa_learnability.py                               # colour + shape, 1 object
    python bench/vqa_learnability.py --types colour,shape,count,position --objects 1-4
    python bench/vqa_learnability.py --oracle-colour 30            # colour as a loud channel
    python bench/vqa_learnability.py --phase1-steps 300            # captions first, LLM frozen
    python bench/vqa_learnability.py --lr 3e-3 --llm-lr 3e-4       # the LLM 10x slower
    python bench/vqa_learnability.py --types colour,shape,count,position --objects 1-4 \
        --scenes 3000 --score models/vlm                           # a trained VLM, by objects

A quick probe for the align stage, about 20-40 s on 2 cores instead of a full `dvc repro`. It
draws fresh scenes, encodes them with the real encoder, asks one question per scene, and
trains phase 2 (projector + every LLM layer + embeddings) from the SFT model on them with
AdamW under the pipeline's warmup-cosine schedule. Every `--every` steps it prints, per
question type, the held-out mean NLL and accuracy of the first answer token under teacher
forcing (chance: ln(answers) and 1/answers).

`--phase1-steps K` first trains the projector alone (LLM frozen) for K steps on captions of
the training scenes, like the align stage's phase 1.

`--oracle-colour S` appends a channel group holding the object's colour one-hot, times S, to
every image token. It separates "the features lack the information" from "the model cannot
route it to the answer": with S large the colour is learned at once, with S near the
features' own scale it is not, although a linear probe reads colour from these features.
The oracle needs one object per scene (`--objects 1-1`).

`--llm-lr R` trains the LLM (layers and embeddings) at R while the projector keeps `--lr`, like
`align.phase2.projector_lr`. On colour + shape questions about one-object scenes, 400 steps:
everything at 3e-3 leaves colour at chance (shape is learned in 100 steps and crowds colour out
of the image tokens); `--lr 1e-3` gives colour 0.56, `--lr 3e-4` 0.54 and `--lr 3e-3
--llm-lr 3e-4` 0.54, with shape at 0.98-1.00 in all three.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from minimind.data.builtin import scenes
from minimind.data.vlm_tokens import IMAGE_PAD, VLMDataset
from minimind.encoders import load_vision_encoder
from minimind.model.vlm import PROJECTOR_PREFIX, MiniMindVLM, load_language_model, trainable_filter
from minimind.training import lr_multiplier, param_groups

ORACLE_CHANNELS = 8  # a few spare zeros beside the six colours


class InMemoryFeatures:
    """The `Features` protocol over a dict sha256 -> (N, D) array."""

    def __init__(self, features: dict[str, np.ndarray]) -> None:
        self.features = features
        self.num_tokens, self.feature_dim = next(iter(features.values())).shape

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self.features

    def __getitem__(self, sha256: str) -> np.ndarray:
        return self.features[sha256]


def draw_scenes(count: int, objects: tuple[int, int], seed: int) -> list[scenes.Scene]:
    rng = random.Random(seed)
    return [scenes.random_scene(rng, rng.randint(*objects)) for _ in range(count)]


def encode_scenes(drawn: list[scenes.Scene], encoder_spec: str, oracle_colour: float
                  ) -> dict[str, np.ndarray]:
    """Features (float16, like the cache) by a digest of each scene."""
    encoder = load_vision_encoder(encoder_spec)
    features = {}
    for start in range(0, len(drawn), 64):
        batch = drawn[start:start + 64]
        tokens = encoder.encode([scenes.render(s) for s in batch]).half().numpy()
        for scene, value in zip(batch, tokens, strict=True):
            if oracle_colour:
                oracle = np.zeros((len(value), ORACLE_CHANNELS), np.float16)
                oracle[:, list(scenes.COLOURS).index(scene.objects[0].colour)] = oracle_colour
                value = np.concatenate([value, oracle], axis=1)
            features[scene_digest(scene)] = value
    return features


def scene_digest(scene: scenes.Scene) -> str:
    return hashlib.sha256(repr(scene).encode()).hexdigest()


def caption_rows(drawn: list[scenes.Scene], seed: int) -> list[dict]:
    """One caption conversation per scene (phase 1's task)."""
    rng = random.Random(seed)
    return [{"conversations": json.dumps([
                {"role": "user", "content": f"{scenes.IMAGE_MARKER}\n"
                                            f"{rng.choice(scenes.CAPTION_PROMPTS)}"},
                {"role": "assistant", "content": scenes.caption(scene)}]),
             "images": [scene_digest(scene)], "source": "caption"} for scene in drawn]


def question_rows(drawn: list[scenes.Scene], types: list[str], seed: int) -> list[dict]:
    """One first-turn question per scene, of a type drawn among those the scene allows."""
    rng = random.Random(seed)
    rows = []
    for scene in drawn:
        options = scenes.questions(scene, rng)
        kinds = [kind for kind in types if options.get(kind)]
        if not kinds:
            continue
        kind = rng.choice(kinds)
        question, answer = rng.choice(options[kind])
        conversation = [{"role": "user", "content": f"{scenes.IMAGE_MARKER}\n{question}"},
                        {"role": "assistant", "content": answer}]
        rows.append({"conversations": json.dumps(conversation), "images": [scene_digest(scene)],
                     "source": kind})
    return rows


@torch.no_grad()
def first_token_scores(model: MiniMindVLM, data: VLMDataset, indices: list[int]
                       ) -> tuple[float, float]:
    """Mean NLL and accuracy of the first supervised token of each example."""
    batch = data.collate(indices)
    model.eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   image_features=batch["image_features"]).logits
    model.train()
    rows = torch.arange(len(indices))
    first = (batch["labels"] != -100).int().argmax(1)
    predicted, target = logits[rows, first - 1], batch["labels"][rows, first]
    nll = torch.nn.functional.cross_entropy(predicted, target).item()
    return nll, (predicted.argmax(-1) == target).float().mean().item()


def score_by_objects(model: MiniMindVLM, data: VLMDataset, rows: list[dict],
                     objects: dict[str, int]) -> None:
    """Print first-token NLL/accuracy per question type and number of objects in the scene.

    Separates reading an attribute (one object) from binding it to the object the question
    names (two or more).
    """
    groups: dict[tuple[str, int], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row["source"], objects[row["images"][0]]), []).append(i)
    for kind in sorted({kind for kind, _ in groups}):
        cells, hits, total = [], 0.0, 0
        for count in sorted(n for k, n in groups if k == kind):
            idx = groups[(kind, count)]
            nll, acc = first_token_scores(model, data, idx)
            cells.append(f"{count} obj {acc:.2f} (n={len(idx)})")
            hits, total = hits + acc * len(idx), total + len(idx)
        print(f"{kind:8s} all {hits / total:.2f} (n={total}) | " + "  ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", default="colour,shape")
    parser.add_argument("--objects", default="1-1", help="objects per scene, as low-high")
    parser.add_argument("--scenes", type=int, default=1000, help="80%% train, 20%% held out")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--llm-lr", type=float, default=None,
                        help="phase-2 rate of the LLM (default: --lr, like the projector)")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--model", type=Path, default=Path("models/sft"))
    parser.add_argument("--oracle-colour", type=float, default=0.0)
    parser.add_argument("--phase1-steps", type=int, default=0,
                        help="projector-only caption steps (LLM frozen) before the VQA steps")
    parser.add_argument("--phase1-lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", type=Path, default=None, metavar="VLM_DIR",
                        help="train nothing: score a trained VLM (e.g. models/vlm) on the "
                             "held-out questions per type and number of objects")
    args = parser.parse_args()
    types = args.types.split(",")
    objects = tuple(int(n) for n in args.objects.split("-"))
    if args.oracle_colour and objects != (1, 1):
        parser.error("--oracle-colour needs --objects 1-1 (one colour per scene)")
    torch.manual_seed(args.seed)

    started = time.perf_counter()
    drawn = draw_scenes(args.scenes, objects, args.seed)
    features = InMemoryFeatures(encode_scenes(drawn, args.encoder, args.oracle_colour))
    rows = question_rows(drawn, types, args.seed)
    split = int(len(rows) * 0.8)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train = VLMDataset.from_rows(rows[:split], tokenizer, features, max_len=320, desc="train")
    held_out = VLMDataset.from_rows(rows[split:], tokenizer, features, max_len=320, desc="val")
    by_type = {kind: [i for i, row in enumerate(rows[split:]) if row["source"] == kind][:160]
               for kind in types}
    print(f"{len(train)} train / {len(held_out)} held-out questions of {types}, "
          f"{features.num_tokens} tokens x {features.feature_dim} per image "
          f"({time.perf_counter() - started:.0f} s to draw and encode)", flush=True)

    if args.score:
        score_by_objects(MiniMindVLM.from_pretrained(args.score), held_out, rows[split:],
                         {scene_digest(s): len(s.objects) for s in drawn})
        return
    model = MiniMindVLM.from_language_model(
        load_language_model(args.model), features.feature_dim, features.num_tokens,
        tokenizer.convert_tokens_to_ids(IMAGE_PAD))
    order = torch.Generator().manual_seed(args.seed)
    score = lambda: "  ".join(  # noqa: E731
        f"{kind} {nll:.2f}/{acc:.2f}" for kind, (nll, acc) in
        ((kind, first_token_scores(model, held_out, idx)) for kind, idx in by_type.items() if idx))
    if args.phase1_steps:
        seen = {row["images"][0] for row in rows[:split]}
        captions = VLMDataset.from_rows(
            caption_rows([s for s in drawn if scene_digest(s) in seen], args.seed), tokenizer,
                                        features, max_len=320, desc="captions")
        train_steps(model, captions, trainable_filter(model.config, "none"), args.phase1_steps,
                    args.phase1_lr, args.batch, order, every=args.every, label="phase 1",
                    score=score)
    train_steps(model, train, trainable_filter(model.config, "all", train_embeddings=True),
                args.steps, args.lr, args.batch, order, every=args.every, label="phase 2",
                score=score, llm_lr=args.llm_lr)


def train_steps(model: MiniMindVLM, data: VLMDataset, trains, steps: int, lr: float,
                batch_size: int, order: torch.Generator, every: int, label: str,
                score=None, llm_lr: float | None = None) -> None:
    """AdamW over the parameters `trains` accepts, warmup-cosine schedule, clip 1.0; the
    projector at `lr`, the rest at `llm_lr` (default `lr`)."""
    for name, param in model.named_parameters():
        param.requires_grad_(trains(name))
    params = [p for p in model.parameters() if p.requires_grad]
    llm_scale = 1.0 if llm_lr is None else llm_lr / lr
    groups = param_groups(model, 0.0, lambda name: 1.0 if name.startswith(PROJECTOR_PREFIX)
                          else llm_scale)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    started = time.perf_counter()
    for step in range(1, steps + 1):
        scale = lr_multiplier(step - 1, warmup_steps=10, max_steps=steps, min_lr_ratio=0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"] * scale
        batch = data.collate(torch.randint(len(data), (batch_size,), generator=order).tolist())
        loss = model(**batch, loss_only=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % every == 0 or step == steps:
            scores = f" | held-out first-token NLL/acc: {score()}" if score else ""
            print(f"{label} step {step:4d} loss {loss.item():.3f}{scores} | "
                  f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
