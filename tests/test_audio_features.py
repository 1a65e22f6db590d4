"""Audio features: log-mel shapes and token counts, a Whisper encoder from a tiny random config
in a temporary directory, one encoder call per unique clip, and variable-length features that
round-trip through the ragged feature cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

from minimind.data.audio import SAMPLE_RATE, decode_audio, encode_wav  # noqa: E402 - NUMBA_CACHE_DIR first
from minimind.data.features import FeatureStore, write_audio_features  # noqa: E402
from minimind.encoders.audio import LogMel, load_audio_encoder  # noqa: E402


def clip(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_log_mel_is_25_tokens_a_second_of_320() -> None:
    encoder = load_audio_encoder("log-mel")
    assert isinstance(encoder, LogMel) and encoder.feature_dim == 320
    waves = [clip(3.0), clip(0.5, 1000), clip(1.234)]
    tokens = encoder.encode(waves)
    assert [tuple(t.shape) for t in tokens] == [(76, 320), (13, 320), (31, 320)]
    assert [encoder.num_tokens(len(w)) for w in waves] == [76, 13, 31]
    frames = encoder.log_mel(waves[1])  # a 1 kHz tone: its mel band is the loudest
    assert frames.shape == (51, 80) and frames.min() > -1.5 and frames.max() <= 1.5
    import librosa

    centres = librosa.mel_frequencies(82, fmax=SAMPLE_RATE / 2)[1:-1]
    assert abs(int(frames[25].argmax()) - int(np.argmin(np.abs(centres - 1000)))) <= 1
    assert encoder.describe()["tokens_per_second"] == 25.0


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    path = tmp_path_factory.mktemp("whisper")
    config = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                           max_source_positions=100, max_target_positions=16, vocab_size=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(path)  # 2 s windows
    return path


def test_whisper_from_a_local_dir_cuts_windows_and_keeps_real_tokens(tiny_whisper) -> None:
    encoder = load_audio_encoder(str(tiny_whisper))
    assert encoder.feature_dim == 16 and encoder.tokens_per_second == 50
    waves = [clip(1.0), clip(3.5)]  # one window; two windows (2 s + 1.5 s)
    tokens = encoder.encode(waves)
    assert [tuple(t.shape) for t in tokens] == [(50, 16), (175, 16)]
    assert [encoder.num_tokens(len(w)) for w in waves] == [50, 175]
    assert torch.allclose(tokens[0], encoder.encode([waves[0]])[0], atol=1e-5)  # batch-free
    with pytest.raises(ValueError, match="no such directory"):
        load_audio_encoder("./no/such/whisper")


class CountingLogMel(LogMel):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        self.calls.append(len(clips))
        return super()._encode(clips)


def test_each_unique_clip_encoded_once_and_lengths_round_trip(tmp_path: Path) -> None:
    waves = [clip(s, hz) for s, hz in ((0.3, 200), (1.0, 300), (2.2, 500), (0.7, 900))]
    items = [(f"sha{i}", encode_wav(w)) for i, w in enumerate(waves)]
    stream = [items[0], items[1], items[0], items[2], items[1], items[3]]
    encoder = CountingLogMel()
    stats = write_audio_features(stream, encoder, tmp_path, batch_size=2, progress=False,
                                 shard_tokens=60)
    assert sum(encoder.calls) == 4 and stats["unique_clips"] == 4
    assert stats["duplicates_skipped"] == 2 and stats["shards"] == 3
    store = FeatureStore(tmp_path)
    assert store.ragged and store.num_tokens is None and len(store) == 4
    reference = LogMel()
    for sha, data in items:
        expected = reference.encode([decode_audio(data)])[0].numpy()
        assert store.length(sha) == len(expected) == store[sha].shape[0]
        assert store[sha].dtype == np.float16
        np.testing.assert_allclose(store[sha], expected, atol=2e-3)
    assert stats["tokens"] == sum(store.length(s) for s, _ in items)
    with pytest.raises(KeyError, match="clip nope is not in the feature cache"):
        store["nope"]
