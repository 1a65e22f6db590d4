"""Frozen encoders that turn raw media into the feature tokens multimodal models consume.

The features stage runs them once per unique input and caches the result; training reads the
cache only. `load_vision_encoder(spec)` resolves a params string to an encoder.
"""

from minimind.encoders.vision import ENCODERS, VisionEncoder, load_vision_encoder

__all__ = ["ENCODERS", "VisionEncoder", "load_vision_encoder"]
