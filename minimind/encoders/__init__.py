"""Frozen encoders that turn raw media into the feature tokens multimodal models consume.

The features stage runs them once per unique input and caches the result; training reads the
cache only. `load_vision_encoder(spec)` / `load_audio_encoder(spec)` resolve a params string
to an encoder.
"""

from minimind.encoders.audio import AUDIO_ENCODERS, AudioEncoder, load_audio_encoder
from minimind.encoders.vision import ENCODERS, VisionEncoder, load_vision_encoder

__all__ = ["AUDIO_ENCODERS", "ENCODERS", "AudioEncoder", "VisionEncoder", "load_audio_encoder",
           "load_vision_encoder"]
