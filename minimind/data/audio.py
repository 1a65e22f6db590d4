"""Audio of the omni path: validation, 16 kHz mono normalisation, content hashes and the store.

Speech data arrives as WAV, FLAC or Ogg at any sample rate and channel count (8 kHz stereo
call recordings, 22.05 kHz TTS, 48 kHz studio takes), and sometimes as junk: empty fields,
truncated files, HTML error pages saved as `.wav`. Audio encoders want one thing (16 kHz mono
float), so clean checks every clip once (`normalize_audio`): the byte count, then the format
from its magic bytes (no WAV/FLAC/Ogg magic: `audio_not_audio`), then the duration from the
header before any sample is decoded, then a full decode (soundfile), a downmix to mono (the
channel mean) and a resample to 16 kHz (librosa, soxr backend). The result is stored as
16-bit PCM WAV with a fixed 44-byte header and nothing else, so its sha256 depends on the
samples only: that hash is how clean stores each clip once and what the feature cache is
keyed by. A bad clip raises `AudioError` with a snake_case reason: `audio_empty`,
`audio_not_audio`, `audio_undecodable`, `audio_too_short`, `audio_too_long`,
`audio_too_large`, `audio_missing`.

`AudioStore` writes each unique clip once to `audio-NNNNN.parquet` shards (`AUDIO_SCHEMA`)
and `iter_clean_audio` streams them back; `decode_audio` turns a stored clip into float32.
"""

from __future__ import annotations

import hashlib
import io
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from minimind.data.records import SchemaError
from minimind.data.shards import UniqueRowStore, human_size, iter_rows, shard_paths

SAMPLE_RATE = 16_000
AUDIO_PREFIX = "audio"
AUDIO_SCHEMA = pa.schema([("sha256", pa.string()), ("audio", pa.binary()),
                          ("samples", pa.int64()), ("seconds", pa.float32())])
# Magic bytes of the accepted containers; soundfile decodes all three (FLAC and Vorbis/Opus
# inside Ogg). Anything else is not treated as audio, so no other decoder is ever tried on it.
_MAGIC = {b"RIFF": "WAV", b"RF64": "WAV", b"fLaC": "FLAC", b"OggS": "OGG"}


class AudioCheckConfig(BaseModel):
    """What clean accepts as an audio clip (params.yaml `clean.audio`)."""

    model_config = ConfigDict(extra="forbid")

    min_seconds: float = Field(0.1, gt=0, description="shorter clips are rejected")
    max_seconds: float = Field(30.0, gt=0, description="longer clips are rejected, checked on "
                               "the header before decoding")
    max_bytes: int = Field(50_000_000, ge=1, description="larger encoded files are rejected "
                           "unread")
    shard_rows: int = Field(2000, ge=1, description="clips per data/clean/audio shard")

    @model_validator(mode="after")
    def _check_durations(self) -> AudioCheckConfig:
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds {self.min_seconds} exceeds max_seconds "
                             f"{self.max_seconds}")
        return self


class AudioError(SchemaError):
    """An audio clip that clean cannot accept; `reason` is one of the `audio_*` codes."""


@dataclass(frozen=True)
class CleanAudio:
    """A checked clip: 16 kHz mono PCM16 WAV bytes and the sha256 of those bytes."""

    sha256: str
    wav: bytes
    samples: int

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


def read_audio_ref(ref: bytes | str, base_dir: Path, config: AudioCheckConfig) -> bytes:
    """The encoded bytes of a clip given inline (bytes) or by a path relative to base_dir."""
    if isinstance(ref, bytes):
        return ref
    path = base_dir / ref  # an absolute ref stays absolute
    if not path.is_file():
        raise AudioError("audio_missing", f"{ref}: no such file under {base_dir}")
    size = path.stat().st_size
    if size > config.max_bytes:
        raise AudioError("audio_too_large", f"{ref}: {size} bytes > max_bytes {config.max_bytes}")
    return path.read_bytes()


def audio_format(data: bytes) -> str | None:
    """"WAV", "FLAC" or "OGG" from the magic bytes; None when the bytes are no such file."""
    container = _MAGIC.get(data[:4])
    if container == "WAV" and data[8:12] != b"WAVE":
        return None
    return container


def normalize_audio(data: bytes, config: AudioCheckConfig | None = None) -> CleanAudio:
    """Check encoded audio bytes and return the clip as 16 kHz mono PCM16 WAV with its hash.

    Raises AudioError: `audio_empty` (no bytes, or no samples), `audio_too_large` (bytes over
    max_bytes), `audio_not_audio` (no WAV/FLAC/Ogg magic), `audio_undecodable` (damaged or
    truncated), `audio_too_long` / `audio_too_short` (duration outside the limits; the upper
    one is checked on the header first).
    """
    import soundfile

    config = config or AudioCheckConfig()
    if not data:
        raise AudioError("audio_empty", "zero-length audio")
    if len(data) > config.max_bytes:
        raise AudioError("audio_too_large", f"{len(data)} bytes > max_bytes {config.max_bytes}")
    container = audio_format(data)
    if container is None:
        raise AudioError("audio_not_audio", "no WAV, FLAC or Ogg header (starts with "
                                            f"{data[:8]!r})")
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.frames > 0 and info.samplerate > 0:
            _check_duration(info.frames / info.samplerate, config, upper_only=True)
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as err:  # libsndfile errors, and RuntimeError/ValueError on junk headers
        raise AudioError("audio_undecodable", f"{container}: {type(err).__name__}: "
                                              f"{str(err).strip()}") from None
    if samples.size == 0:
        raise AudioError("audio_empty", f"{container} holds no samples")
    if not np.isfinite(samples).all():
        raise AudioError("audio_undecodable", f"{container}: NaN or infinite samples")
    mono = to_mono_16k(samples, rate)
    _check_duration(len(mono) / SAMPLE_RATE, config, upper_only=False)
    wav = encode_wav(mono)
    return CleanAudio(hashlib.sha256(wav).hexdigest(), wav, len(mono))


def _check_duration(seconds: float, config: AudioCheckConfig, upper_only: bool) -> None:
    if seconds > config.max_seconds:
        raise AudioError("audio_too_long", f"{seconds:.2f} s > max_seconds {config.max_seconds}")
    if not upper_only and seconds < config.min_seconds:
        raise AudioError("audio_too_short",
                         f"{seconds:.3f} s < min_seconds {config.min_seconds}")


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """[frames, channels] float samples at `rate` -> float32 [frames'] at 16 kHz in [-1, 1]."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if rate != SAMPLE_RATE:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def encode_wav(mono: np.ndarray) -> bytes:
    """16 kHz mono PCM16 WAV: the 44-byte canonical header and the samples, nothing else."""
    # x 32768 (what decoders divide 16-bit samples by), so 16-bit input round-trips exactly
    pcm = np.clip(np.round(mono * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def decode_audio(data: bytes) -> np.ndarray:
    """A clean clip's WAV bytes as float32 [samples] at 16 kHz (raises on anything else)."""
    with wave.open(io.BytesIO(data)) as clip:
        if (clip.getframerate(), clip.getnchannels(), clip.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"not a clean clip: {clip.getframerate()} Hz, "
                             f"{clip.getnchannels()} channel(s), {8 * clip.getsampwidth()}-bit "
                             f"(expected {SAMPLE_RATE} Hz mono 16-bit)")
        pcm = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def describe_audio(data: bytes) -> str | None:
    """A short stand-in for audio bytes in reports (`<WAV 22050 Hz 1 ch 1.53 s, 67.4 kB,
    sha256 0123456789ab>`), from the header only; None when the bytes are not audio."""
    import soundfile

    container = audio_format(data)
    if container is None:
        return None
    digest = hashlib.sha256(data).hexdigest()[:12]
    try:
        info = soundfile.info(io.BytesIO(data))
        kind = (f"{container} {info.samplerate} Hz {info.channels} ch "
                f"{info.frames / max(info.samplerate, 1):.2f} s")
    except Exception:  # a damaged header: say what it claims to be
        kind = f"{container}, unreadable"
    return f"<{kind}, {human_size(len(data))}, sha256 {digest}>"


class AudioStore(UniqueRowStore):
    """The unique clean clips of a corpus, each stored once in `audio-NNNNN.parquet`."""

    def __init__(self, directory: Path, shard_rows: int) -> None:
        super().__init__(directory, AUDIO_PREFIX, AUDIO_SCHEMA, shard_rows)

    def add(self, clip: CleanAudio) -> bool:
        """Store the clip unless its hash is already stored; True if it was new."""
        return self._add(clip.sha256, {"audio": clip.wav, "samples": clip.samples,
                                       "seconds": clip.seconds})


def iter_clean_audio(audio_dir: Path) -> Iterator[tuple[str, bytes]]:
    """(sha256, WAV bytes) of every clip in a clean audio directory, in stored order."""
    for row in iter_rows(shard_paths(audio_dir, AUDIO_PREFIX), ["sha256", "audio"],
                         batch_rows=64):
        yield row["sha256"], row["audio"]
