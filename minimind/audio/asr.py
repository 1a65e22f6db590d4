"""The independent intelligibility judge: pocketsphinx's bundled en-US model, plus WER/CER.

pocketsphinx shares no weights, data or method with anything this project trains or with
the TTS voice, so its word error rate on generated speech measures intelligibility without
grading our own homework. It is a weak recogniser (a 2010s HMM with a general English
language model): even clean TTS audio scores well above 0 % WER, which is why every
codec figure is reported next to the same recogniser's WER on the original audio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from minimind.audio.signal import resample, to_pcm16

ASR_SAMPLE_RATE = 16000


class PocketSphinx:
    """`transcribe(wave, sr)` -> lowercase words. One decoder, reused across utterances."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wave: np.ndarray, sr: int) -> str:
        pcm = to_pcm16(resample(wave, sr, ASR_SAMPLE_RATE))
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return normalise(hyp.hypstr) if hyp is not None else ""


def normalise(text: str) -> str:
    """Lowercase words of letters, digits and apostrophes, single-spaced (punctuation and
    pocketsphinx's filler marks such as <sil> dropped)."""
    text = re.sub(r"<[^>]*>|\[[^\]]*\]", " ", text.lower())
    return " ".join(re.findall(r"[a-z0-9']+", text))


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_rate(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> float:
    """Corpus WER (`unit="word"`) or CER (`"char"`): total edits / total reference units,
    after `normalise` on both sides."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    split = str.split if unit == "word" else list
    edits = units = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref_units, hyp_units = split(normalise(ref)), split(normalise(hyp))
        edits += edit_distance(ref_units, hyp_units)
        units += len(ref_units)
    if units == 0:
        raise ValueError("references are empty: no error rate")
    return edits / units
