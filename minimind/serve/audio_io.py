"""Audio in and out of the server: OpenAI `input_audio` parts in, WAV replies out.

A clip arrives base64-encoded inside the request (`{"data": "<base64>", "format": "wav"}`).
It goes through the checks the clean stage applies to training clips
(`minimind.data.audio.normalize_audio`: byte count, container magic bytes, duration from the
header before decoding, full decode, downmix to mono, resample to 16 kHz), so the audio
encoder hears a request's clip exactly as it heard the training clips, whatever rate and
channel count the client recorded at. Every refusal is an `AudioInputError` carrying the HTTP
status and the error code the client gets; for a clip clean would reject, the code is clean's
own reason (`audio_empty`, `audio_not_audio`, `audio_too_long`, ...).

Speech out is written as 16-bit PCM mono WAV at the speech codec's own rate: resampling it
to another rate would only cost time, and every WAV reader takes any rate.
"""

from __future__ import annotations

import base64
import binascii
import io
import wave
from dataclasses import dataclass, field

import numpy as np

from minimind.data.audio import AudioCheckConfig, AudioError, decode_audio, normalize_audio

DEFAULT_MAX_AUDIO_BYTES = 8 << 20  # decoded bytes of one clip
DEFAULT_MAX_AUDIO_CLIPS = 4  # per request
INPUT_FORMATS = ("wav", "flac", "ogg")  # the containers normalize_audio decodes


class AudioInputError(ValueError):
    """An audio part the server refuses: `status` (400 or 413) and `code` go to the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class AudioLimits:
    """What a request may send: clips per request, bytes per clip, clean's duration limits."""

    max_clips: int = DEFAULT_MAX_AUDIO_CLIPS
    max_bytes: int = DEFAULT_MAX_AUDIO_BYTES
    checks: AudioCheckConfig = field(default_factory=AudioCheckConfig)

    def __post_init__(self) -> None:
        if self.max_clips < 1 or self.max_bytes < 1:
            raise ValueError(f"max_audio_clips ({self.max_clips}) and max_audio_bytes "
                             f"({self.max_bytes}) must be positive")

    @property
    def max_base64_chars(self) -> int:
        """Room the clips may take in a request body (base64: 4 characters per 3 bytes)."""
        return self.max_clips * 4 * -(-self.max_bytes // 3)


def load_clip(data: str, audio_format: str | None, limits: AudioLimits) -> np.ndarray:
    """The float32 16 kHz mono samples of one `input_audio` part, checked like clean checks
    training clips. The size is checked on the base64 text, before anything is decoded."""
    if audio_format is not None and audio_format.lower() not in INPUT_FORMATS:
        raise AudioInputError(400, "unsupported_audio_format",
                              f"Audio format {audio_format!r} is not supported; send "
                              f"{', '.join(INPUT_FORMATS)}.")
    size = len(data.rstrip("=")) * 3 // 4  # what valid base64 decodes to
    if size > limits.max_bytes:
        raise AudioInputError(413, "audio_too_large",
                              f"The audio clip is {size} bytes; this server accepts at most "
                              f"{limits.max_bytes} bytes per clip.")
    try:
        encoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise AudioInputError(400, "audio_not_base64",
                              f"The audio data is not valid base64: {error}.") from None
    checks = limits.checks.model_copy(update={"max_bytes": limits.max_bytes})
    try:
        clean = normalize_audio(encoded, checks)
    except AudioError as error:
        status = 413 if error.reason == "audio_too_large" else 400
        raise AudioInputError(status, error.reason,
                              f"The audio clip is not accepted ({error.reason}): "
                              f"{error.detail}.") from None
    return decode_audio(clean.wav)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples in [-1, 1] as a 16-bit PCM WAV file at `sample_rate`."""
    pcm = np.clip(np.round(np.asarray(samples, np.float32) * 32768.0), -32768, 32767)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def wav_base64(samples: np.ndarray, sample_rate: int) -> str:
    """`wav_bytes` as base64 text, the form OpenAI's `audio.data` takes."""
    return base64.b64encode(wav_bytes(samples, sample_rate)).decode("ascii")
