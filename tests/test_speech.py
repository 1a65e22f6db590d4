"""builtin:scene_speech: deterministic omni records whose clips are valid 22.05 kHz speech of
exactly the texts the scene graph gives, with answers that match the scene. Synthesis costs
~0.1-0.3 s a clip on 2 cores, so only a handful of records are built."""

from __future__ import annotations

import functools
import io
import wave

from minimind.data.builtin import BUILTIN_SOURCES, speech
from minimind.data.builtin.scenes import ANSWERS, SHAPES, caption, png_bytes, question_type, render
from minimind.data.builtin.speech import (
    MIX,
    SAMPLE_RATE,
    TRANSCRIBE_PROMPTS,
    build_scene_speech,
    speak,
    speech_conversations,
)


@functools.cache
def records(limit: int, seed: int) -> tuple[dict, ...]:
    return tuple(build_scene_speech(limit, seed))


def seconds(clip: bytes) -> float:
    with wave.open(io.BytesIO(clip)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return w.getnframes() / w.getframerate()


def test_registered_as_omni() -> None:
    assert BUILTIN_SOURCES["scene_speech"].kind == "omni"


def test_same_seed_same_bytes_and_limit_is_a_prefix() -> None:
    first = records(6, 0)
    assert first == tuple(build_scene_speech(6, 0))
    assert records(3, 0) == first[:3]
    assert [r["conversations"] for r in first] != [
        c for _, _, c, _, _ in speech_conversations(6, 1)]


def test_records_are_minimind_o_layout_with_valid_speech() -> None:
    for record in records(6, 0):
        user, answer = record["conversations"]
        assert user["role"] == "user" and answer["role"] == "assistant"
        assert user["content"].count("<audio>") == len(record["question_audios"]) == 1
        assert user["content"].count("<image>") == ("image_bytes" in record)
        for clip in [*record["question_audios"], record["answer_audio"]]:
            assert 0.2 < seconds(clip) < 15
        if "image_bytes" in record:
            assert record["image_bytes"].startswith(b"\x89PNG")


def test_records_carry_their_evaluation_fields() -> None:
    """Spoken questions are typed with their answer set, transcriptions typed `transcript`,
    caption requests left to the evaluation's fallback (a long answer: `open`)."""
    from minimind.data.records import TRANSCRIPT_TYPE, validate_record

    assert TRANSCRIPT_TYPE == speech.TRANSCRIPT_TYPE  # spelled out in the generator
    made = list(speech_conversations(6, 0))
    for record, (task, _, _, spoken, _) in zip(records(6, 0), made, strict=True):
        validate_record("omni", record)
        if task == "question":
            kind = question_type(spoken[0])
            assert record["answer_types"] == [kind]
            assert record["answer_choices"] == [list(ANSWERS[kind])]
        elif task == "transcribe":
            assert record["answer_types"] == [TRANSCRIPT_TYPE] and "answer_choices" not in record
        else:
            assert "answer_types" not in record and "answer_choices" not in record


def test_texts_and_answers_come_from_the_scene() -> None:
    made = list(speech_conversations(40, 0))
    tasks = {task for task, *_ in made}
    assert tasks == set(MIX)
    for task, scene, conversation, spoken, answer in made:
        assert conversation[1]["content"] == answer
        if task == "caption":
            assert answer == caption(scene)
        elif task == "question":
            kind = question_type(spoken[0])
            assert kind is not None and answer in ANSWERS[kind]
            if kind == "colour":  # the one object of the asked shape has the answered colour
                shape = next(w for w in SHAPES if f" {w}" in spoken[0])
                assert [o.colour for o in scene.matching(shape=shape)] == [answer]
        else:
            assert scene is None and answer == spoken[0]
            assert conversation[0]["content"].split("\n", 1)[1] in TRANSCRIBE_PROMPTS
    # the shown pictures are the shared scene stream, as in scene_captions / scene_vqa
    from minimind.data.builtin.scenes import build_scene_captions

    shown = [png_bytes(render(scene)) for _, scene, *_ in made if scene is not None]
    assert shown[0] == next(iter(build_scene_captions(1, 0)))["image_bytes"]


def test_speak_is_deterministic_and_rate_changes_duration() -> None:
    speak.cache_clear()
    text = "How many objects are there?"
    slow, fast = speak(text, 1.15), speak(text, 0.9)
    speak.cache_clear()
    assert speak(text, 1.15) == slow
    assert seconds(slow) > seconds(fast) + 0.1
