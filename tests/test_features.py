"""The feature cache: one encoder pass per unique image, float16 shards read back by memmap."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from minimind.data.features import ENCODER_FILE, FeatureStore, write_features
from minimind.data.images import decode_image, encode_png
from minimind.encoders.vision import VisionEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingEncoder(VisionEncoder):
    """Features from the pixels themselves (4 quadrant colours), with every call recorded."""

    spec, family = "counting", "test"
    num_tokens, feature_dim, image_size = 4, 3, 8
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        self.batches.append([image.tobytes() for image in images])
        pixels = torch.tensor(np.stack([np.asarray(image.resize((2, 2))) for image in images]))
        return pixels.reshape(len(images), 4, 3).float() / 7.0

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.spec, "family": self.family, "num_tokens": self.num_tokens,
                "feature_dim": self.feature_dim, "image_size": self.image_size}


def png(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))


def stream(seeds: list[int]) -> list[tuple[str, bytes]]:
    return [(hashlib.sha256(data).hexdigest(), data) for data in map(png, seeds)]


def test_encoder_runs_once_per_unique_image(tmp_path) -> None:
    images = stream([0, 1, 2, 1, 3, 0, 4, 5, 2, 6, 7, 8, 0])  # 9 unique, 4 repeats
    encoder = CountingEncoder()
    stats = write_features(iter(images), encoder, tmp_path, batch_size=4, progress=False)
    encoded = [pixels for batch in encoder.batches for pixels in batch]
    assert len(encoded) == 9 and len(set(encoded)) == 9  # each unique image exactly once
    assert [len(batch) for batch in encoder.batches] == [4, 4, 1]
    assert stats["images"] == 13 and stats["unique_images"] == 9
    assert stats["duplicates_skipped"] == 4
    assert (stats["num_tokens"], stats["feature_dim"], stats["encoder"]) == (4, 3, "counting")
    assert stats["images_per_s"] > 0


def test_store_round_trip_equals_encoder_output(tmp_path) -> None:
    images = stream(list(range(10)))
    encoder = CountingEncoder()
    write_features(images, encoder, tmp_path, batch_size=4, progress=False, shard_rows=3)
    assert sorted(p.name for p in tmp_path.glob("shard-*.npy")) == [
        f"shard-{i:05d}.npy" for i in range(4)]  # 10 rows in shards of 3
    store = FeatureStore(tmp_path)
    assert len(store) == 10 and (store.num_tokens, store.feature_dim) == (4, 3)
    assert store.encoder["images"] == 10 and store.encoder["encoder"] == "counting"
    for sha, data in images:
        assert sha in store
        expected = CountingEncoder().encode([decode_image(data)])[0]
        features = store[sha]
        assert features.dtype == np.float16 and features.shape == (4, 3)
        np.testing.assert_allclose(features.astype(np.float32), expected.numpy(), rtol=1e-3)
    assert isinstance(store[images[0][0]].base, np.memmap)  # read lazily from disk


def test_efficientnet_features_survive_float16(tmp_path) -> None:
    from minimind.encoders import load_vision_encoder

    encoder = load_vision_encoder("efficientnet-lite0")
    images = stream([0, 1])
    write_features(images, encoder, tmp_path, batch_size=2, progress=False)
    store = FeatureStore(tmp_path)
    expected = encoder.encode([decode_image(d) for _, d in images])
    for (sha, _), want in zip(images, expected, strict=True):
        assert store[sha].shape == (49, 1360)
        np.testing.assert_allclose(store[sha].astype(np.float32), want.numpy(), atol=4e-3,
                                   rtol=1e-3)
    meta = json.loads((tmp_path / ENCODER_FILE).read_text())
    assert meta["family"] == "efficientnet-lite0" and meta["dtype"] == "float16"


def test_empty_stream_writes_an_empty_cache(tmp_path) -> None:
    stats = write_features([], CountingEncoder(), tmp_path, batch_size=4, progress=False)
    assert stats["unique_images"] == 0
    assert len(FeatureStore(tmp_path)) == 0


def test_errors_name_the_image_and_the_cache(tmp_path) -> None:
    with pytest.raises(ValueError, match="image abc123: cannot decode"):
        write_features([("abc123", b"not a png")], CountingEncoder(), tmp_path / "bad",
                       batch_size=4, progress=False)
    with pytest.raises(FileNotFoundError, match="not a feature cache"):
        FeatureStore(tmp_path / "bad")  # encoder.json is written last: no half caches
    write_features(stream([0]), CountingEncoder(), tmp_path / "ok", batch_size=4,
                   progress=False)
    with pytest.raises(KeyError, match="image f00d is not in the feature cache"):
        FeatureStore(tmp_path / "ok")["f00d"]


def test_shards_that_disagree_with_encoder_json_are_refused(tmp_path: Path) -> None:
    images = stream([0])
    write_features(images, CountingEncoder(), tmp_path, batch_size=4, progress=False)
    np.save(tmp_path / "shard-00000.npy", np.zeros((1, 5, 3), dtype=np.float16))
    with pytest.raises(ValueError, match=r"shard-00000.npy: float16 \(1, 5, 3\), expected"):
        FeatureStore(tmp_path)[images[0][0]]
