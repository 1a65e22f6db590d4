"""The server with an omni model: audio in (`input_audio` parts) and speech out (a Talker),
driven by the official `openai` client over HTTP.

The tiny MiniMind-O and Talker are random (`tests.tiny_omni`), so what is checked is the
plumbing: each request's clip goes through clean's checks and the model's audio encoder and
fills its pad run; every kind of bad clip gets a 4xx naming the reason; a model or server that
cannot hear or speak says so; a spoken reply is a WAV at the codec's rate whose transcript is
the text; streamed sound arrives between the text deltas; and the Talker is fed exactly the
Thinker states it was trained on.
"""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
from transformers import AutoTokenizer

from minimind.data.audio import AudioCheckConfig, decode_audio, normalize_audio
from minimind.data.vlm_tokens import expand_audio, expand_images
from minimind.serve import __main__ as serve_main
from minimind.serve import create_app
from minimind.serve import engine as engine_module
from minimind.serve.audio_io import AudioLimits, wav_bytes
from minimind.serve.engine import GenerationSettings
from tests.server import uvicorn_thread
from tests.tiny_omni import audio_part, save_tiny_omni, save_tiny_talker, tone, wav_file
from tests.tiny_vlm import data_uri, encoded, picture, save_tiny_encoder, save_tiny_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_NAME = "tiny-omni"
MAX_AUDIO_BYTES = 100_000  # 1 s of 16 kHz mono PCM16 is 32 kB
MAX_SECONDS = 2.0
MAX_FRAMES = 48  # Talker frames of one reply: 6 streamed chunks of 8
ERROR_FIELDS = {"message", "type", "param", "code"}
QUESTION = "what did you hear?"
CLIP = wav_file(tone(1.0))
SPEAK = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-omni")
    vlm = save_tiny_vlm(root / "vlm", save_tiny_encoder(root / "encoder"))
    omni = save_tiny_omni(root / "omni", vlm)
    return {"vlm": vlm, "omni": omni,
            "talker": save_tiny_talker(root / "talker", omni, MAX_FRAMES)}


@pytest.fixture(scope="module")
def omni_app(folders: dict[str, Path]) -> Any:
    return create_app(folders["omni"], model_name=MODEL_NAME, talker=folders["talker"],
                      max_audio_bytes=MAX_AUDIO_BYTES, max_audio_clips=2,
                      audio_checks=AudioCheckConfig(max_seconds=MAX_SECONDS),
                      max_tokens_limit=24)


@pytest.fixture(scope="module")
def client(omni_app: Any) -> Iterator[openai.OpenAI]:
    with uvicorn_thread(omni_app) as url:
        yield openai.OpenAI(api_key="none", base_url=f"{url}/v1", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def vlm_client(folders: dict[str, Path]) -> Iterator[openai.OpenAI]:
    with uvicorn_thread(create_app(folders["vlm"], model_name=MODEL_NAME)) as url:
        yield openai.OpenAI(api_key="none", base_url=f"{url}/v1", max_retries=0, timeout=60)


@pytest.fixture
def heard(omni_app: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[np.ndarray]]:
    """The clips of each call of the served audio encoder, recorded as requests arrive."""
    encoder = omni_app.state.engine.audio_encoder
    calls: list[list[np.ndarray]] = []
    encode = encoder.encode

    def recording(clips: list[np.ndarray]) -> Any:
        calls.append(list(clips))
        return encode(clips)

    monkeypatch.setattr(encoder, "encode", recording)
    return calls


def ask(*parts: dict[str, Any], text: str = QUESTION, role: str = "user"
        ) -> list[dict[str, Any]]:
    return [{"role": role, "content": [*parts, {"type": "text", "text": text}]}]


def complete(client: openai.OpenAI, messages: list[dict[str, Any]], **options: Any) -> Any:
    options = {"temperature": 0, "max_tokens": 8, **options}
    return client.chat.completions.create(model=MODEL_NAME, messages=messages, **options)


def prompt_tokens(folders: dict[str, Path], content: str, clip_tokens: list[int],
                  image_tokens: int = 16) -> int:
    tokenizer = AutoTokenizer.from_pretrained(folders["omni"])
    messages = expand_audio(expand_images([{"role": "user", "content": content}], image_tokens),
                            clip_tokens)
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             return_dict=True)["input_ids"])


def test_a_clip_is_checked_encoded_and_fills_its_pad_run(
        client: openai.OpenAI, omni_app: Any, folders: dict[str, Path],
        heard: list[list[np.ndarray]]) -> None:
    response = complete(client, ask(audio_part(CLIP)))

    assert response.choices[0].message.content
    assert response.choices[0].message.audio is None  # not asked for
    clean = decode_audio(normalize_audio(CLIP).wav)
    assert len(heard) == 1 and np.array_equal(heard[0][0], clean)  # encoded at inference
    tokens = omni_app.state.engine.audio_encoder.num_tokens(len(clean))
    assert tokens == 26  # log-mel: 101 frames of 1 s, 4 to a token
    assert response.usage.prompt_tokens == prompt_tokens(folders, f"<audio>\n{QUESTION}",
                                                         [tokens])


def test_8khz_stereo_is_heard_as_16khz_mono(client: openai.OpenAI,
                                            heard: list[list[np.ndarray]]) -> None:
    stereo = wav_file(tone(1.0, 8000), 8000, channels=2)
    one = complete(client, ask(audio_part(stereo)))
    assert one.choices[0].message.content
    assert heard[0][0].ndim == 1 and len(heard[0][0]) == 16000
    assert one.usage.prompt_tokens == complete(client, ask(audio_part(CLIP))).usage.prompt_tokens


def test_an_image_and_a_clip_together(client: openai.OpenAI, folders: dict[str, Path],
                                      heard: list[list[np.ndarray]]) -> None:
    image = {"type": "image_url", "image_url": {"url": data_uri(encoded(picture("red")))}}
    short = wav_file(tone(0.5))
    response = complete(client, ask(image, audio_part(CLIP), audio_part(short)))
    assert response.choices[0].message.content
    assert [len(clip) for clip in heard[0]] == [16000, 8000]  # both clips in one call
    assert response.usage.prompt_tokens == prompt_tokens(
        folders, f"<image>\n<audio>\n<audio>\n{QUESTION}", [26, 13])


SILENT = wav_file(np.zeros(0, np.float32))
BAD_CLIPS = {  # part, status, code, what the message says
    "zero bytes": (audio_part(b""), 400, "audio_empty", "zero-length audio"),
    "zero-length wav": (audio_part(SILENT), 400, "audio_empty", "WAV holds no samples"),
    "random bytes": (audio_part(np.random.default_rng(0).bytes(2000)), 400, "audio_not_audio",
                     "no WAV, FLAC or Ogg header"),
    "bad base64": (audio_part("UklGRi$$$not-base64"), 400, "audio_not_base64",
                   "not valid base64"),
    "too long": (audio_part(wav_file(tone(MAX_SECONDS + 0.5))), 400, "audio_too_long",
                 f"2.50 s > max_seconds {MAX_SECONDS}"),
    "mp3": (audio_part(CLIP, "mp3"), 400, "unsupported_audio_format", "'mp3' is not supported"),
    "over max bytes": (audio_part(wav_file(tone(4.0))), 413, "audio_too_large",
                       f"at most {MAX_AUDIO_BYTES} bytes per clip"),
}


@pytest.mark.parametrize("case", list(BAD_CLIPS))
def test_bad_clips_get_a_4xx_naming_the_reason(client: openai.OpenAI,
                                               heard: list[list[np.ndarray]], case: str) -> None:
    part, status, code, says = BAD_CLIPS[case]
    with pytest.raises(openai.APIStatusError) as caught:
        complete(client, ask(audio_part(CLIP), part))
    error = caught.value
    assert error.status_code == status
    assert set(error.response.json()["error"]) == ERROR_FIELDS
    assert (error.code, error.type) == (code, "invalid_request_error")
    assert error.param == "messages[0].content[1]"
    assert says in error.message
    assert heard == []  # refused before any encoding


@pytest.mark.parametrize(("messages", "param", "code"), [
    (ask(*[audio_part(CLIP)] * 3), "messages", "too_many_audio_clips"),
    (ask(audio_part(CLIP), role="system"), "messages[0].content", "invalid_value"),
    (ask(audio_part(CLIP), text="and <audio>"), "messages[0].content[1]", "invalid_value"),
    ([{"role": "user", "content": "<|audio_pad|> hi"}], "messages[0].content", "invalid_value"),
])
def test_misplaced_or_too_many_clips_get_a_400(client: openai.OpenAI,
                                               messages: list[dict[str, Any]], param: str,
                                               code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, messages)
    assert (caught.value.param, caught.value.code) == (param, code)


def test_a_model_without_audio_refuses_clips_and_a_server_without_talker_speech(
        vlm_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(vlm_client, ask(audio_part(CLIP)))
    assert (caught.value.param, caught.value.code) == ("messages[0].content[0]",
                                                       "audio_not_supported")
    with pytest.raises(openai.BadRequestError) as caught:
        complete(vlm_client, [{"role": "user", "content": "hi"}], **SPEAK)
    assert (caught.value.param, caught.value.code) == ("modalities",
                                                       "audio_output_not_supported")
    assert "Talker" in caught.value.message
    assert complete(vlm_client, [{"role": "user", "content": "hi"}]).choices[0].message.content


def read_wav(data: str) -> tuple[int, int, np.ndarray]:
    """(sample rate, channels, int16 samples) of base64 WAV."""
    with wave.open(io.BytesIO(base64.b64decode(data))) as clip:
        pcm = np.frombuffer(clip.readframes(clip.getnframes()), "<i2")
        return clip.getframerate(), clip.getnchannels(), pcm


def test_a_spoken_reply_is_a_wav_whose_transcript_is_the_text(client: openai.OpenAI,
                                                              omni_app: Any) -> None:
    message = complete(client, ask(audio_part(CLIP)), **SPEAK).choices[0].message

    assert message.content and message.audio.transcript == message.content
    assert message.audio.id.startswith("audio_") and message.audio.expires_at > 0
    rate, channels, pcm = read_wav(message.audio.data)
    codec = omni_app.state.engine.codec
    assert (rate, channels) == (codec.sample_rate, 1) == (22050, 1)
    assert len(pcm) == MAX_FRAMES * 2 * 256  # the Talker never stops: frames x stack x hop
    assert pcm.any()
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, ask(audio_part(CLIP)), modalities=["text", "audio"],
                 audio={"voice": "alloy", "format": "mp3"})
    assert caught.value.param == "audio.format" and "wav" in caught.value.message


def test_streamed_speech_comes_between_the_text_deltas(client: openai.OpenAI) -> None:
    messages = ask(audio_part(CLIP))
    chunks = list(complete(client, messages, stream=True, max_tokens=16, **SPEAK))
    deltas = [chunk.choices[0].delta for chunk in chunks]
    texts = [i for i, delta in enumerate(deltas) if delta.content]
    sounds = [i for i, delta in enumerate(deltas) if delta.audio and delta.audio.data]
    assert sounds and sounds[0] < texts[-1]  # speech began while the text went on
    assert len(sounds) == MAX_FRAMES // 8
    ids = {delta.audio.id for delta in deltas if delta.audio}
    assert len(ids) == 1 and ids.pop().startswith("audio_")
    text = "".join(deltas[i].content for i in texts)
    ending = [delta.audio for delta in deltas if delta.audio and not delta.audio.data]
    assert len(ending) == 1 and ending[0].transcript == text
    assert chunks[-1].choices[0].finish_reason == "length"
    streamed = [read_wav(deltas[i].audio.data) for i in sounds]
    assert {(rate, channels) for rate, channels, _ in streamed} == {(22050, 1)}
    whole = complete(client, messages, max_tokens=16, **SPEAK).choices[0].message
    assert whole.content == text  # same text, and as much sound, in both modes
    assert sum(len(pcm) for _, _, pcm in streamed) == len(read_wav(whole.audio.data)[2])


@pytest.fixture
def talker_input(monkeypatch: pytest.MonkeyPatch) -> tuple[list[torch.Tensor], list[int]]:
    """The Thinker states pushed to the Talker, and the tokens sampled, as the engine runs."""
    pushed: list[torch.Tensor] = []
    sampled: list[int] = []
    push, next_token = engine_module.StreamingTalker.push, engine_module._next_token
    monkeypatch.setattr(engine_module.StreamingTalker, "push",
                        lambda self, states: pushed.append(states) or push(self, states))
    monkeypatch.setattr(engine_module, "_next_token",
                        lambda *args: sampled.append(next_token(*args)) or sampled[-1])
    return pushed, sampled


def test_the_talker_reads_each_reply_tokens_state_where_it_is_input(
        omni_app: Any, talker_input: tuple[list[torch.Tensor], list[int]]) -> None:
    """The training contract: hidden_states[thinker_layer] of every reply token (the last one
    too, which a reply cut at max_tokens never feeds back), in order, nothing else."""
    engine, (pushed, sampled) = omni_app.state.engine, talker_input
    clip = decode_audio(normalize_audio(CLIP).wav)
    prompt = engine.prompt_ids([{"role": "user", "content": f"<audio>\n{QUESTION}"}],
                               clips=[clip])
    settings = GenerationSettings(max_new_tokens=10, temperature=1.0, seed=3, speak=True,
                                  audio_chunk_frames=8)
    deltas = list(engine.stream(prompt, settings, clips=[clip]))

    assert len(sampled) == 10 and deltas[-1].finish_reason == "length"
    with torch.no_grad():
        states = engine.model(input_ids=torch.tensor([prompt + sampled]),
                              audio_features=torch.cat(engine.audio_encoder.encode([clip])),
                              output_hidden_states=True).hidden_states
    expected = states[engine.talker.config.thinker_layer][0, len(prompt):]
    assert torch.allclose(torch.cat(pushed), expected, atol=1e-4)


def test_a_stop_string_is_never_spoken(
        omni_app: Any, talker_input: tuple[list[torch.Tensor], list[int]]) -> None:
    """A token is spoken once its text is final; the tokens from a stop string on, never."""
    engine, (pushed, sampled) = omni_app.state.engine, talker_input
    prompt = engine.prompt_ids([{"role": "user", "content": QUESTION}])
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, seed=1, speak=True,
                                  audio_chunk_frames=8)
    reply = "".join(delta.text for delta in engine.stream(prompt, settings))
    pieces = [engine.tokenizer.decode([token]) for token in sampled]
    # the first later token whose text is plain and new: the stop string, k tokens in
    k = next(k for k, piece in enumerate(pieces) if k >= 2 and piece.isprintable()
             and "\ufffd" not in piece and reply.find(piece) == len("".join(pieces[:k])))
    pushed.clear()

    cut = list(engine.stream(prompt, replace(settings, stop=(pieces[k],))))
    assert cut[-1].finish_reason == "stop"
    assert sum(len(states) for states in pushed) == k


def test_wav_bytes_and_limits() -> None:
    samples = np.array([0.0, 0.5, -1.0, 1.0], np.float32)
    with wave.open(io.BytesIO(wav_bytes(samples, 24000))) as clip:
        assert (clip.getframerate(), clip.getnchannels(), clip.getsampwidth()) == (24000, 1, 2)
        pcm = np.frombuffer(clip.readframes(4), "<i2")
    assert pcm.tolist() == [0, 16384, -32768, 32767]
    limits = AudioLimits(max_clips=2, max_bytes=3000)
    assert limits.max_base64_chars >= 2 * len(base64.b64encode(b"x" * 3000))
    with pytest.raises(ValueError, match="max_audio_clips"):
        AudioLimits(max_clips=0)


def test_serve_cli_takes_audio_options() -> None:
    args = serve_main.parse_args(["--model", "m", "--talker", "t", "--max-audio-bytes", "100",
                                  "--max-audio-clips", "3"])
    assert (args.talker, args.max_audio_bytes, args.max_audio_clips) == ("t", 100, 3)
    assert serve_main.parse_args(["--model", "m"]).talker is None
