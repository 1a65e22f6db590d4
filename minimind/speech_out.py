"""Speech out: the (Thinker states, codec codes) pairs a Talker trains on, and how intelligible
its speech is to an independent recogniser.

Conditioning contract (the server's streaming path follows it too): for each answer token the
Talker reads the Thinker's `hidden_states[layer]` at the position where that token is the
model's input, with the whole conversation (image and audio pads included) before it; the
end-of-turn token is not spoken and gives no row. So at serving time a token's state is ready
one decoding step after the token is sampled, and training sees exactly those states.

Intelligibility is pocketsphinx's WER (minimind.audio.asr): on the Talker's speech, on the
codec's reconstruction of the TTS answer audio (the ceiling the Talker can reach through this
codec), and on the TTS audio itself, always on the same held-out answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from minimind.data.vlm_tokens import (
    AudioFeatures,
    Dropped,
    Features,
    VLMExample,
    collate_vlm,
    encode_vlm,
    parse_messages,
)


@dataclass(frozen=True)
class SpokenAnswer:
    """An omni record ready for the Talker: its tokenized conversation, the answer text and
    the sha256 of the answer's speech."""

    example: VLMExample
    text: str
    answer_audio: str


def spoken_answers(rows: Sequence[Mapping[str, Any]], tokenizer: Any, vision: Features,
                   audio: AudioFeatures, max_len: int) -> list[SpokenAnswer]:
    """Rows with answer speech, tokenized like align_omni does (rows it would drop skipped)."""
    answers = []
    for row in rows:
        if not row.get("answer_audio"):
            continue
        messages = parse_messages(row["conversations"])
        clips = list(row.get("question_audios") or [])
        try:
            example = encode_vlm(tokenizer, messages, list(row["images"]), vision.num_tokens,
                                 max_len, clips, [audio.length(sha) for sha in clips])
        except Dropped:
            continue
        text = next(m["content"] for m in messages if m["role"] == "assistant")
        answers.append(SpokenAnswer(example, text, row["answer_audio"]))
    return answers


@torch.no_grad()
def answer_states(model: Any, answers: Sequence[SpokenAnswer], vision: Features,
                  audio: AudioFeatures, layer: int, end_ids: Sequence[int], pad_id: int,
                  batch_size: int = 16) -> list[torch.Tensor]:
    """Per answer, float32 [answer tokens, hidden] states of the first assistant turn at
    `hidden_states[layer]` (see the module docstring), in the answers' order."""
    model.eval()
    device = next(model.parameters()).device
    states = []
    for start in tqdm(range(0, len(answers), batch_size), desc="thinker states", unit="batch"):
        chunk = answers[start:start + batch_size]
        batch = collate_vlm([a.example for a in chunk], vision, pad_id, audio)
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
        for row, answer in enumerate(chunk):
            labels = torch.from_numpy(answer.example.labels)
            spoken = (labels != -100) & ~torch.isin(labels, torch.tensor(list(end_ids)))
            positions = first_run(spoken)
            states.append(hidden[row, positions].float().cpu())
    return states


def first_run(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the first contiguous run of True in a 1-d mask (the first answer)."""
    where = torch.nonzero(mask).flatten()
    if len(where) == 0:
        raise ValueError("the record has no answer token to speak")
    breaks = torch.nonzero(torch.diff(where) > 1).flatten()
    return where[: int(breaks[0]) + 1] if len(breaks) else where


def word_error_rates(asr: Any, references: Sequence[str],
                     waves: Mapping[str, Sequence[tuple[np.ndarray, int]]]) -> dict[str, float]:
    """pocketsphinx WER per condition ({name: [(wave, sr)] aligned with references})."""
    from minimind.audio.asr import error_rate

    return {name: error_rate(references, [asr.transcribe(wave, sr) for wave, sr in clips])
            for name, clips in waves.items()}
