"""Wave helpers shared by the codec and the ASR judge: mono float32, resampling, int16 PCM."""

from __future__ import annotations

import numpy as np


def as_mono(wave: np.ndarray) -> np.ndarray:
    """A float32 1-D wave; int16 PCM is scaled to [-1, 1], [channels, n] / [n, channels]
    stereo is averaged over its shorter axis."""
    wave = np.asarray(wave)
    if wave.dtype == np.int16:
        wave = wave.astype(np.float32) / 32768.0
    wave = wave.astype(np.float32, copy=False)
    if wave.ndim == 2:
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if wave.ndim != 1:
        raise ValueError(f"expected a mono or stereo wave, got shape {wave.shape}")
    return wave


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """`wave` (mono) at `target_sr`, via soxr's high-quality filter (what librosa uses)."""
    wave = as_mono(wave)
    if sr == target_sr:
        return wave
    import soxr

    return soxr.resample(wave, sr, target_sr, quality="HQ").astype(np.float32)


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """Clipped int16 PCM of a float wave in [-1, 1]."""
    return (np.clip(as_mono(wave), -1.0, 1.0) * 32767.0).astype(np.int16)
