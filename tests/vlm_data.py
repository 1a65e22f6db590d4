"""Synthetic vision data for the VLM tests, written in the pipeline's own file formats.

Fake "images" are colour ids; their cached features carry the colour as a strong signal in one
block of channels plus noise, so a model that reads its image features can learn to name the
colour, and one that ignores them cannot beat chance. Files follow the shared contracts:
clean vlm Parquet shards (`conversations` JSON, `images` sha256 list, the evaluation
fields `answer_types` / `answer_choices` as JSON, `lang`, `source`, `origin`) and the feature
cache (`encoder.json`, float16 `shard-NNNNN.npy`, `index.parquet`).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerFast

from minimind.tokenizer import train_tokenizer

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
IMAGE_TOKENS = 4
FEATURE_DIM = 24
CLEAN_SCHEMA = pa.schema([("conversations", pa.string()), ("images", pa.list_(pa.string())),
                          ("answer_types", pa.string()), ("answer_choices", pa.string()),
                          ("lang", pa.string()), ("source", pa.string()),
                          ("origin", pa.string())])
INDEX_SCHEMA = pa.schema([("sha256", pa.string()), ("shard", pa.int32()), ("row", pa.int32())])


def image_sha(number: int) -> str:
    return hashlib.sha256(f"image-{number}".encode()).hexdigest()


def colour_features(colour: int, rng: np.random.Generator, tokens: int = IMAGE_TOKENS,
                    dim: int = FEATURE_DIM) -> np.ndarray:
    """(tokens, dim) noise with the colour id written into channel block `colour`."""
    features = rng.normal(0.0, 1.0, (tokens, dim))
    block = dim // len(COLOURS)
    features[:, colour * block:(colour + 1) * block] += 4.0
    return features.astype(np.float16)


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def make_records(count: int, seed: int, first_image: int = 0
                 ) -> tuple[list[dict], dict[str, np.ndarray]]:
    """`count` caption and `count` VQA records (a third of the VQA ones with two images) and
    the features of every image they show. VQA records carry the evaluation fields: the
    colour questions typed `colour` (one image) or `which` (two), the colours as choices;
    the follow-up "What shape is it?" is left untyped (a short answer by the fallback)."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    features: dict[str, np.ndarray] = {}
    number = first_image

    def new_image() -> tuple[str, str]:
        nonlocal number
        colour = rng.randrange(len(COLOURS))
        sha = image_sha(number)
        number += 1
        features[sha] = colour_features(colour, noise)
        return sha, COLOURS[colour]

    records = []
    for i in range(count):
        sha, colour = new_image()
        records.append({"conversations": [user("<image>\nDescribe the image."),
                                          assistant(f"A {colour} circle.")],
                        "images": [sha], "source": "captions"})
        if i % 3 == 2:
            (first, c1), (second, c2) = new_image(), new_image()
            which = rng.choice(["first", "second"])
            records.append({"conversations": [
                user(f"<image>\n<image>\nWhat colour is the {which} circle?"),
                assistant(c1 if which == "first" else c2)], "images": [first, second],
                "source": "vqa", "answer_types": ["which"], "answer_choices": [list(COLOURS)]})
        else:
            records.append({"conversations": [user("<image>\nWhat colour is the circle?"),
                                              assistant(colour),
                                              user("What shape is it?"),
                                              assistant("circle")],
                            "images": [sha], "source": "vqa", "answer_types": ["colour", None],
                            "answer_choices": [list(COLOURS), None]})
    return records, features


def write_clean_vlm(clean_dir: Path, split: str, records: list[dict]) -> Path:
    """One clean vlm shard of `records` (conversations and evaluation fields as JSON)."""
    clean_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"conversations": json.dumps(r["conversations"]), "images": r["images"],
             **{key: json.dumps(r[key]) for key in ("answer_types", "answer_choices")
                if r.get(key) is not None},
             "lang": "en", "source": r["source"], "origin": f"{r['source']}:{i}"}
            for i, r in enumerate(records)]
    path = clean_dir / f"{split}-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), path)
    return path


def write_feature_cache(out_dir: Path, features: dict[str, np.ndarray], shard_rows: int = 64,
                        encoder: str = "fake-colour-encoder") -> Path:
    """A feature cache in the features stage's layout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shas = sorted(features)
    index = []
    for shard, start in enumerate(range(0, len(shas), shard_rows)):
        chunk = shas[start:start + shard_rows]
        np.save(out_dir / f"shard-{shard:05d}.npy", np.stack([features[s] for s in chunk]))
        index += [{"sha256": sha, "shard": shard, "row": row} for row, sha in enumerate(chunk)]
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), out_dir / "index.parquet")
    first = next(iter(features.values()))
    (out_dir / "encoder.json").write_text(json.dumps({
        "encoder": encoder, "family": "fake", "num_tokens": first.shape[0],
        "feature_dim": first.shape[1], "image_size": 8, "images": len(features)}))
    return out_dir


def tokenizer_texts() -> list[str]:
    """Text a test tokenizer learns from: the words of the synthetic conversations."""
    words = [*COLOURS, "circle", "Describe the image.", "What colour is the circle?",
             "What shape is it?", "first", "second", "A", "The"]
    return [" ".join(words)] * 20 + [f"A {c} circle." for c in COLOURS] * 10


def small_tokenizer() -> PreTrainedTokenizerFast:
    """A 400-token tokenizer of the synthetic conversations (trained in a fraction of a second)."""
    return train_tokenizer(tokenizer_texts(), vocab_size=400, show_progress=False)
