"""Frozen audio encoders: 16 kHz mono clips -> a variable number of feature tokens [L_i, D].

Unlike an image, a clip has no fixed size, so an encoder here gives each clip as many tokens
as its duration calls for, at a fixed rate (`tokens_per_second`), and `num_tokens(samples)`
says how many before encoding (the data pipeline sizes `<|audio_pad|>` runs with it). Encoders
are inference-only: no gradients, float32 out. The spec string in params picks one:

- `log-mel` (parameter-free, offline default): Whisper's front end computed with librosa,
  80 mel bins, 25 ms Hann window (n_fft 400), 10 ms hop (160 samples) at 16 kHz, log10 of
  the power clamped to 8 decades below the clip's peak and scaled by (x + 4) / 4 (values
  about in [-1, 1]). Four consecutive frames are stacked into one token (D = 4 * 80 = 320,
  25 tokens/s: a 3 s utterance is 75 tokens), which is the rate Whisper's encoder reaches
  after its stride-2 conv plus the usual 2x pooling, short enough for a tiny LLM's context.
  A last partial group is padded with the floor value.
- anything else: a `transformers` Whisper model by hub id or local directory, its
  WhisperFeatureExtractor and the encoder half (WhisperModel.encoder). Whisper only takes
  windows of exactly `chunk_length` seconds (30 s for the released models), so a clip is
  cut into such windows, each padded, and the tokens covering real audio are kept and
  concatenated (50 tokens/s for the released models).

`describe()` is what the feature cache stores in encoder.json.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minimind.data.audio import SAMPLE_RATE


class AudioEncoder(ABC):
    """A frozen clip encoder with a fixed token rate."""

    spec: str
    family: str
    feature_dim: int
    device: torch.device

    def encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """Features of a batch of float32 16 kHz clips: float32 [num_tokens(len), D] each."""
        with torch.no_grad():
            return [tokens.float() for tokens in self._encode(clips)]

    @abstractmethod
    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]: ...

    @abstractmethod
    def num_tokens(self, samples: int) -> int:
        """How many tokens a clip of `samples` samples (16 kHz) becomes."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able identity: `encoder`, `family`, `feature_dim`, `sample_rate`,
        `tokens_per_second`, `preprocessing`."""


class LogMel(AudioEncoder):
    """Stacked log-mel frames (see the module docstring); no weights, fully offline."""

    family = "log-mel"
    n_mels, n_fft, hop_length, stack = 80, 400, 160, 4
    floor_decades = 8.0

    def __init__(self, device: str | torch.device = "cpu") -> None:
        import librosa

        self.spec, self.device = self.family, torch.device(device)
        self.feature_dim = self.n_mels * self.stack
        self.tokens_per_second = SAMPLE_RATE / self.hop_length / self.stack
        self.filters = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=self.n_fft,
                                           n_mels=self.n_mels).astype(np.float32)
        self.window = np.hanning(self.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann

    def frames(self, samples: int) -> int:
        """Frames of a centred STFT: one per hop, plus one."""
        return samples // self.hop_length + 1

    def num_tokens(self, samples: int) -> int:
        return math.ceil(self.frames(samples) / self.stack)

    def log_mel(self, clip: np.ndarray) -> np.ndarray:
        """float32 [frames, n_mels], Whisper-style log compression."""
        import librosa

        spectrum = librosa.stft(clip.astype(np.float32), n_fft=self.n_fft,
                                hop_length=self.hop_length, window=self.window, center=True,
                                pad_mode="reflect" if len(clip) > self.n_fft // 2 else "constant")
        mel = self.filters @ (np.abs(spectrum) ** 2)
        log = np.log10(np.maximum(mel, 1e-10))
        log = np.maximum(log, log.max() - self.floor_decades)
        return ((log + 4.0) / 4.0).T.astype(np.float32)

    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        out = []
        for clip in clips:
            frames = self.log_mel(clip)
            tokens = self.num_tokens(len(clip))
            padded = np.full((tokens * self.stack, self.n_mels), frames.min(), dtype=np.float32)
            padded[:len(frames)] = frames
            out.append(torch.from_numpy(padded.reshape(tokens, self.feature_dim)).to(self.device))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.spec, "family": self.family, "feature_dim": self.feature_dim,
            "sample_rate": SAMPLE_RATE, "tokens_per_second": self.tokens_per_second,
            "preprocessing": {"n_mels": self.n_mels, "n_fft": self.n_fft,
                              "hop_length": self.hop_length, "window": "hann (periodic)",
                              "center": True, "stack_frames": self.stack,
                              "log": f"log10(max(mel, 1e-10)) clamped to peak - "
                                     f"{self.floor_decades}, then (x + 4) / 4"},
        }


class WhisperAudioEncoder(AudioEncoder):
    """The encoder of a `transformers` Whisper model (hub id or local directory)."""

    family = "whisper"

    def __init__(self, spec: str, device: str | torch.device = "cpu") -> None:
        from transformers import WhisperFeatureExtractor, WhisperModel

        config = _whisper_config(spec)
        self.spec, self.device = spec, torch.device(device)
        try:
            self.extractor = WhisperFeatureExtractor.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise ValueError(f"audio encoder {spec!r}: no usable feature extractor "
                             f"(preprocessor_config.json): {_first_line(exc)}") from None
        if self.extractor.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"audio encoder {spec!r}: expects {self.extractor.sampling_rate} Hz, "
                             f"clean audio is {SAMPLE_RATE} Hz")
        model = WhisperModel.from_pretrained(spec, dtype=torch.float32)
        self.model = model.encoder.to(self.device).eval().requires_grad_(False)
        del model
        self.feature_dim = int(config.d_model)
        frames = self.extractor.nb_max_frames
        expected = config.max_source_positions * 2  # two convs, the second with stride 2
        if frames != expected:
            raise ValueError(f"audio encoder {spec!r}: the feature extractor makes {frames} "
                             f"frames per window but the encoder takes {expected}")
        self.window = self.extractor.n_samples  # samples per encoder window
        self.hop = self.extractor.hop_length
        self.tokens_per_second = SAMPLE_RATE / self.hop / 2

    def _window_lengths(self, samples: int) -> list[int]:
        """Samples in each encoder window of a clip (one window for an empty clip)."""
        return [min(self.window, samples - start)
                for start in range(0, max(samples, 1), self.window)]

    def _window_tokens(self, samples: int) -> int:
        """Encoder positions covering `samples` real samples of a window (at least one)."""
        return max(1, math.ceil(samples / self.hop / 2))

    def num_tokens(self, samples: int) -> int:
        return sum(self._window_tokens(n) for n in self._window_lengths(samples))

    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        windows, owners = [], []
        for i, clip in enumerate(clips):
            for start in range(0, max(len(clip), 1), self.window):
                windows.append(clip[start:start + self.window])
                owners.append(i)
        features = self.extractor(windows, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                  padding="max_length").input_features.to(self.device)
        hidden = self.model(features).last_hidden_state
        parts: list[list[torch.Tensor]] = [[] for _ in clips]
        for row, (owner, window) in enumerate(zip(owners, windows, strict=True)):
            parts[owner].append(hidden[row, :self._window_tokens(len(window))])
        return [torch.cat(chunks) for chunks in parts]

    def describe(self) -> dict[str, Any]:
        preprocessing = {key: value for key, value in self.extractor.to_dict().items()
                         if not key.startswith("_") and key != "mel_filters"}
        return {"encoder": self.spec, "family": self.family, "feature_dim": self.feature_dim,
                "sample_rate": SAMPLE_RATE, "tokens_per_second": self.tokens_per_second,
                "window_seconds": self.window / SAMPLE_RATE, "preprocessing": preprocessing}


AUDIO_ENCODERS = {"log-mel": LogMel}


def load_audio_encoder(spec: str, device: str | torch.device = "cpu") -> AudioEncoder:
    """The encoder named by `spec`: a registry name (AUDIO_ENCODERS) or a transformers Whisper
    model (hub id or local directory). Raises ValueError naming the spec when it is neither."""
    if spec in AUDIO_ENCODERS:
        return AUDIO_ENCODERS[spec](device)
    return WhisperAudioEncoder(spec, device)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _whisper_config(spec: str) -> Any:
    """The WhisperConfig of `spec`, or a ValueError saying why it is not a usable encoder."""
    from transformers import AutoConfig

    known = ", ".join(AUDIO_ENCODERS)
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"audio encoder {spec!r}: directory {path} holds no config.json "
                         "(save the model with save_pretrained)")
    if not path.exists() and (path.is_absolute() or spec.startswith((".", "~"))):
        raise ValueError(f"audio encoder {spec!r}: no such directory {path} "
                         f"(built-in encoders: {known})")
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"unknown audio encoder {spec!r}: not a built-in encoder ({known}), not a local "
            f"directory, and the Hugging Face hub could not provide it (unreachable offline, or "
            f"no such model): {_first_line(exc)}") from None
    if config.model_type != "whisper":
        raise ValueError(f"audio encoder {spec!r}: a {config.model_type!r} model; only Whisper "
                         "encoders are supported")
    return config
