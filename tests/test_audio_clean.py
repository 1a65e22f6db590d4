"""Audio through clean: every bad clip rejected with its reason, any rate and channel count
normalised to 16 kHz mono PCM16 WAV with its duration kept, every unique clip stored once, and
omni records from Parquet cleaned into rows of hashes like vlm records."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

from minimind.data.audio import (  # noqa: E402 - NUMBA_CACHE_DIR first
    SAMPLE_RATE,
    AudioCheckConfig,
    AudioError,
    decode_audio,
    describe_audio,
    iter_clean_audio,
    normalize_audio,
)
from minimind.data.cleaning import CleanConfig, clean_corpus  # noqa: E402
from minimind.data.shards import iter_rows, shard_paths  # noqa: E402
from stages.download import write_vlm_parquet  # noqa: E402


def tone(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1, hz: float = 440.0,
         fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * hz * t)
    data = np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, format=fmt, subtype=None if fmt == "OGG" else "PCM_16")
    return buffer.getvalue()


GOOD = tone(1.0)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "audio_empty"),
    (b"<html>404 not found</html>", "audio_not_audio"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "audio_not_audio"),
    (GOOD[:30], "audio_undecodable"),  # a WAV cut inside its header
    (b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunkjunkjunkjunk", "audio_undecodable"),
    (b"fLaC" + b"\x00" * 40, "audio_undecodable"),
    (tone(0.0), "audio_empty"),
    (tone(0.05), "audio_too_short"),
    (tone(31.0, rate=8000), "audio_too_long"),
])
def test_bad_clips_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(AudioError) as caught:
        normalize_audio(data)
    assert caught.value.reason == reason


def test_byte_limit_is_checked_before_decoding() -> None:
    with pytest.raises(AudioError, match="audio_too_large"):
        normalize_audio(GOOD, AudioCheckConfig(max_bytes=len(GOOD) - 1))
    with pytest.raises(ValueError, match="min_seconds 2.0 exceeds max_seconds 1.0"):
        AudioCheckConfig(min_seconds=2.0, max_seconds=1.0)


@pytest.mark.parametrize(("rate", "channels", "fmt"), [
    (8000, 2, "WAV"), (22050, 1, "WAV"), (44100, 2, "FLAC"), (16000, 1, "OGG")])
def test_any_rate_and_layout_becomes_16k_mono_pcm16(rate: int, channels: int, fmt: str) -> None:
    clip = normalize_audio(tone(1.5, rate, channels, fmt=fmt))
    info = soundfile.info(io.BytesIO(clip.wav))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (
        16000, 1, "PCM_16", "WAV")
    assert clip.samples == 24000 and clip.seconds == pytest.approx(1.5)
    wave = decode_audio(clip.wav)
    assert len(wave) == 24000
    # the downmix is the channel mean: amplitude 0.5 * mean(1/c .. c/c) of the input tone
    expected = 0.5 * np.mean([(c + 1) / channels for c in range(channels)])
    assert np.abs(wave[2000:-2000]).max() == pytest.approx(expected, abs=0.03 if fmt == "OGG"
                                                           else 0.005)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(wave) == pytest.approx(440, abs=2)


def test_equal_samples_in_other_containers_get_one_hash() -> None:
    pcm = soundfile.read(io.BytesIO(GOOD), dtype="int16")[0]
    wav, flac = io.BytesIO(), io.BytesIO()
    for buffer, fmt in ((wav, "WAV"), (flac, "FLAC")):
        soundfile.write(buffer, pcm, SAMPLE_RATE, format=fmt, subtype="PCM_16")
    wav, flac = wav.getvalue(), flac.getvalue()
    assert wav != flac and normalize_audio(wav).sha256 == normalize_audio(flac).sha256
    assert normalize_audio(wav).wav[:4] == b"RIFF" and len(normalize_audio(wav).wav) == 44 + 32000


def test_describe_audio_reads_the_header_only() -> None:
    text = describe_audio(tone(2.0, 8000, 2))
    assert text.startswith("<WAV 8000 Hz 2 ch 2.00 s, 64.0 kB, sha256 ")
    assert describe_audio(b"not audio") is None


def omni(question: str, answer: str, clips: list[bytes], answer_clip: bytes | None,
         image: bytes | None = None) -> dict:
    prefix = ("<image>\n" if image else "") + "<audio>\n" * len(clips)
    record = {"conversations": [{"role": "user", "content": prefix + question},
                                {"role": "assistant", "content": answer}],
              "question_audios": clips, "answer_audio": answer_clip}
    if image is not None:
        record["image_bytes"] = image
    return record


def test_omni_parquet_cleans_to_rows_of_hashes_and_each_clip_once(tmp_path: Path) -> None:
    from tests.test_vlm_clean import RED

    a, b = tone(1.0, hz=300), tone(1.2, 8000, 2, hz=500)
    records = [
        omni("What colour is it?", "red", [a], b, RED),
        omni("Transcribe the audio.", "hello", [b], None),
        omni("Again.", "hello again", [a], a),  # the same clip three times: stored once
        omni("Two clips.", "ok", [a], None),  # given a second clip below: 1 marker, 2 clips
        omni("Empty.", "no", [b""], None),
        omni("Junk.", "no", [b"<html>"], None),
        omni("No audio.", "no", [], None, RED),
    ]
    records[3]["question_audios"] = [a, b]  # two clips for one <audio> marker
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "s.parquet", "wb") as handle:
        write_vlm_parquet(records, handle)
    out = tmp_path / "clean"
    report = clean_corpus([{"name": "s", "kind": "omni", "files": [{"path": "s.parquet"}]}],
                          raw, out, CleanConfig(val_fraction=0.0), progress=False)
    assert report["rejects_by_reason"] == {"audio_count_mismatch": 1, "audio_empty": 1,
                                           "audio_not_audio": 1, "no_audio": 1}
    assert report["audio"] == {"stored": 2, "duplicates": 3, "rejected": 2}
    rows = list(iter_rows(shard_paths(out / "omni", "train"),
                          ["conversations", "images", "question_audios", "answer_audio",
                           "source"]))
    sha_a, sha_b = normalize_audio(a).sha256, normalize_audio(b).sha256
    assert [(r["question_audios"], r["answer_audio"], len(r["images"])) for r in rows] == [
        ([sha_a], sha_b, 1), ([sha_b], None, 0), ([sha_a], sha_a, 0)]
    assert {r["source"] for r in rows} == {"s"}
    stored = dict(iter_clean_audio(out / "audio"))
    assert set(stored) == {sha_a, sha_b} and len(decode_audio(stored[sha_b])) == 19200
    text = (out / "rejects.jsonl").read_text()
    rejected = [json.loads(line) for line in text.splitlines()]
    empty = next(r for r in rejected if r["reason"] == "audio_empty")
    assert empty["detail"].startswith("question audio 1 of 1: ")
    mismatch = next(r for r in rejected if r["reason"] == "audio_count_mismatch")
    assert mismatch["record"]["question_audios"][1].startswith("<WAV 8000 Hz 2 ch 1.20 s, ")
    assert "RIFF" not in text  # clips are described, never dumped
