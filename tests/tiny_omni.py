"""A tiny MiniMind-O folder and a tiny Talker folder, for the omni server tests.

The omni model is the random tiny MiniMind-V of `tests.tiny_vlm` grown by
`MiniMindOmni.from_vlm` around the parameter-free log-mel audio encoder, so nothing is
downloaded. The Talker is random too, with a 2-level, 16-code rvq-mel codec trained on a
synthetic chirp; its stop head is pinned off, so it speaks until `max_frames` (a random stop
head might end the speech on its first frame, and the tests need sound to stream). Both build
in a few seconds.
"""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from minimind.audio.codec import RvqMelCodec
from minimind.audio.rvq import RVQConfig
from minimind.data.vlm_tokens import AUDIO_PAD
from minimind.encoders.audio import load_audio_encoder
from minimind.model import MiniMindOmni, MiniMindVLM
from minimind.model.talker import Talker, TalkerConfig, save_talker

AUDIO_ENCODER = "log-mel"


def save_tiny_omni(folder: Path, vlm_dir: Path) -> Path:
    """The VLM of `vlm_dir` with a fresh audio projector for log-mel tokens, saved with its
    tokenizer as the align-omni stage saves models/omni."""
    vlm = MiniMindVLM.from_pretrained(vlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(vlm_dir)
    encoder = load_audio_encoder(AUDIO_ENCODER)
    torch.manual_seed(0)
    omni = MiniMindOmni.from_vlm(vlm, encoder.feature_dim,
                                 tokenizer.convert_tokens_to_ids(AUDIO_PAD), encoder.describe())
    omni.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_talker(folder: Path, omni_dir: Path, max_frames: int) -> Path:
    """A random 1-layer Talker reading `omni_dir`'s middle layer, that never stops before
    `max_frames` and starts speaking after the first token (lookahead 1, 2 frames a token)."""
    thinker = MiniMindOmni.from_pretrained(omni_dir).config.text_config
    sample_rate = 22050
    codec = RvqMelCodec.train([(tone(2.0, sample_rate, sweep=True), sample_rate)],
                              RVQConfig(num_quantizers=2, codebook_size=16, kmeans_iters=2))
    torch.manual_seed(0)
    talker = Talker(TalkerConfig.for_thinker(thinker, codec=codec, hidden_size=32, num_layers=1,
                                             num_heads=2, max_frames=max_frames,
                                             frames_per_token=2.0, lookahead=1))
    with torch.no_grad():
        talker.stop_head.bias.fill_(-1e4)
    save_talker(talker.eval(), folder, codec)
    return folder


def tone(seconds: float, sample_rate: int = 16000, sweep: bool = False) -> np.ndarray:
    """A float32 sine at 440 Hz (or a 200 -> 2000 Hz chirp) with a little noise."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    pitch = 200 + 900 * t / seconds if sweep else 440.0
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * pitch * t) + 0.02 * noise).astype(np.float32)


def wav_file(samples: np.ndarray, sample_rate: int = 16000, channels: int = 1) -> bytes:
    """16-bit PCM WAV of mono samples, the same on every channel when `channels` > 1."""
    pcm = np.repeat((samples * 32767).astype("<i2")[:, None], channels, axis=1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def audio_part(data: bytes | str, audio_format: str = "wav") -> dict[str, object]:
    """An OpenAI `input_audio` content part (bytes are base64-encoded; text goes as it is)."""
    text = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    return {"type": "input_audio", "input_audio": {"data": text, "format": audio_format}}
