"""The server with a vision-language model, driven by the official `openai` client over HTTP.

A tiny MiniMind-V (random SigLIP encoder) is taught to give a different reply per picture
colour, exported with `export_vlm`, and served from the exported folder. A reply therefore
shows which image the model saw: the encoder ran on the request's own image at inference.
Every kind of bad image gets a 4xx in OpenAI's error shape; a text-only model refuses images.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from PIL import Image
from transformers import AutoTokenizer

from minimind.data.vlm_tokens import expand_images
from minimind.export.vlm import export_vlm
from minimind.model import MiniMindVLM
from minimind.serve import __main__ as serve_main
from minimind.serve import create_app
from minimind.serve.image_input import ImageInputError, ImageLimits, data_uri_bytes
from minimind.serve.schemas import ChatMessage
from tests.server import uvicorn_thread
from tests.tiny_vlm import (
    QUESTION,
    data_uri,
    encoded,
    picture,
    save_tiny_encoder,
    save_tiny_vlm,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LESSONS = {"red": "red circle", "blue": "a blue one"}
MODEL_NAME = "tiny-vlm"
MAX_IMAGE_BYTES = 4000
MAX_IMAGES = 2
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The exported VLM, and its language model alone as a text-only folder."""
    root = tmp_path_factory.mktemp("tiny-vlm")
    trained = save_tiny_vlm(root / "vlm", save_tiny_encoder(root / "encoder"), LESSONS)
    vlm = MiniMindVLM.from_pretrained(trained)
    vlm.language_model.save_pretrained(root / "text")
    AutoTokenizer.from_pretrained(trained).save_pretrained(root / "text")
    return {"vlm": export_vlm(trained, root / "export"), "text": root / "text"}


@pytest.fixture(scope="module")
def vlm_app(folders: dict[str, Path]) -> Any:
    return create_app(folders["vlm"], model_name=MODEL_NAME, max_image_bytes=MAX_IMAGE_BYTES,
                      max_images=MAX_IMAGES, max_tokens_limit=16)


@pytest.fixture(scope="module")
def client(vlm_app: Any) -> Iterator[openai.OpenAI]:
    with uvicorn_thread(vlm_app) as url:
        yield openai.OpenAI(api_key="none", base_url=f"{url}/v1", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def text_client(folders: dict[str, Path]) -> Iterator[openai.OpenAI]:
    with uvicorn_thread(create_app(folders["text"], model_name=MODEL_NAME)) as url:
        yield openai.OpenAI(api_key="none", base_url=f"{url}/v1", max_retries=0, timeout=60)


@pytest.fixture
def encoder_calls(vlm_app: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images per call of the served vision encoder, recorded as requests arrive."""
    vision = vlm_app.state.engine.vision
    calls: list[int] = []
    encode = vision.encode

    def counting(images: list[Image.Image]) -> Any:
        calls.append(len(images))
        return encode(images)

    monkeypatch.setattr(vision, "encode", counting)
    return calls


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def ask(*urls: str, text: str = QUESTION, role: str = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": [*(image_part(url) for url in urls),
                                       {"type": "text", "text": text}]}]


def png(colour: str) -> str:
    return data_uri(encoded(picture(colour)))


def complete(client: openai.OpenAI, messages: list[dict[str, Any]], **options: Any) -> Any:
    return client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0,
                                          **options)


@pytest.mark.parametrize("colour", list(LESSONS))
def test_reply_shows_the_image_the_encoder_saw(client: openai.OpenAI, folders: dict[str, Path],
                                               encoder_calls: list[int], colour: str) -> None:
    response = complete(client, ask(png(colour)))

    assert response.choices[0].message.content == LESSONS[colour]
    assert response.choices[0].finish_reason == "stop"
    assert encoder_calls == [1]  # this request's image, encoded at inference
    tokenizer = AutoTokenizer.from_pretrained(folders["vlm"])
    prompt = expand_images([{"role": "user", "content": f"<image>\n{QUESTION}"}], 16)
    expected = tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
    assert response.usage.prompt_tokens == len(expected)  # 16 pads per image included


def test_streamed_reply_with_an_image_equals_the_whole_one(client: openai.OpenAI) -> None:
    for colour, reply in LESSONS.items():
        chunks = list(complete(client, ask(png(colour)), stream=True,
                               stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply
        assert chunks[-1].usage.prompt_tokens == complete(client, ask(png(colour))
                                                          ).usage.prompt_tokens


@pytest.mark.parametrize(("fmt", "media_type"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_jpeg_and_webp_data_uris_are_read(client: openai.OpenAI, fmt: str,
                                          media_type: str) -> None:
    url = data_uri(encoded(picture("blue"), fmt), media_type)
    assert complete(client, ask(url)).choices[0].message.content == LESSONS["blue"]


def test_several_images_are_encoded_in_one_call_and_text_alone_runs_no_encoder(
        client: openai.OpenAI, encoder_calls: list[int]) -> None:
    one = complete(client, ask(png("red")), max_tokens=4)
    two = complete(client, ask(png("red"), png("blue")), max_tokens=4)
    assert encoder_calls == [1, 2]
    assert two.usage.prompt_tokens == one.usage.prompt_tokens + 16 + 1  # pads + a newline
    complete(client, [{"role": "user", "content": QUESTION}], max_tokens=4)
    assert encoder_calls == [1, 2]


def test_image_parts_become_markers_where_they_stand() -> None:
    message = ChatMessage.model_validate({"role": "user", "content": [
        {"type": "text", "text": "first"}, image_part("data:x"), {"type": "text", "text": "b"},
        image_part("data:y")]})
    assert message.for_template("<image>")["content"] == "first\n<image>\nb\n<image>"
    assert [part.url for part in message.images] == ["data:x", "data:y"]


def noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels))


PNG = encoded(picture("red"))
BAD_IMAGES = {
    "corrupt base64": ("data:image/png;base64,iVBOR$$$not-base64", 400, "invalid_image"),
    "not an image": (data_uri(b"<html>404 Not Found</html>"), 400, "invalid_image"),
    "truncated png": (data_uri(PNG[: len(PNG) // 2]), 400, "invalid_image"),
    "over max bytes": (data_uri(noise_png(64)), 413, "image_too_large"),
    "too small": (data_uri(encoded(Image.new("RGB", (8, 8)))), 400, "invalid_image_size"),
    "too wide": (data_uri(encoded(Image.new("RGB", (5000, 16)))), 400, "invalid_image_size"),
    "remote url": ("https://example.com/cat.png", 400, "remote_image_not_supported"),
    "gif": (data_uri(encoded(picture("red"), "GIF"), "image/gif"), 400, "invalid_image_url"),
    "not base64": ("data:image/png,%89PNG", 400, "invalid_image_url"),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_get_openai_shaped_4xx(client: openai.OpenAI, encoder_calls: list[int],
                                          case: str, stream: bool) -> None:
    url, status, code = BAD_IMAGES[case]
    with pytest.raises(openai.APIStatusError) as caught:
        complete(client, ask(png("blue"), url), stream=stream)
    error = caught.value
    assert error.status_code == status
    assert set(error.response.json()["error"]) == ERROR_FIELDS
    assert (error.code, error.type) == (code, "invalid_request_error")
    assert error.param == "messages[0].content[1]"
    assert encoder_calls == []  # refused before any encoding


def test_a_remote_url_is_refused_with_a_clear_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, ask("http://example.com/cat.png"))
    assert "offline" in caught.value.message and "data:image/png;base64" in caught.value.message


@pytest.mark.parametrize(("messages", "param", "code"), [
    (ask(*[png("red")] * (MAX_IMAGES + 1)), "messages", "too_many_images"),
    (ask(png("red"), role="system"), "messages[0].content", "invalid_value"),
    (ask(png("red"), text="look: <image>"), "messages[0].content[1]", "invalid_value"),
    ([{"role": "user", "content": "<|image_pad|> hi"}], "messages[0].content", "invalid_value"),
])
def test_misplaced_or_too_many_images_get_a_400(client: openai.OpenAI,
                                                messages: list[dict[str, Any]], param: str,
                                                code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, messages)
    assert (caught.value.param, caught.value.code) == (param, code)
    assert set(caught.value.response.json()["error"]) == ERROR_FIELDS


def test_a_text_only_model_refuses_images_and_still_answers_text(
        text_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(text_client, ask(png("red")))
    assert (caught.value.param, caught.value.code) == ("messages[0].content[0]",
                                                       "images_not_supported")
    assert "text only" in caught.value.message
    reply = complete(text_client, [{"role": "user", "content": "look: <image>"}], max_tokens=3)
    assert reply.usage.completion_tokens == 3  # the marker is plain text to a text model


def test_data_uri_parsing() -> None:
    assert data_uri_bytes(data_uri(b"abc"), 10) == b"abc"
    upper = "DATA:IMAGE/PNG;charset=x;BASE64," + base64.b64encode(b"abcd").decode()
    assert data_uri_bytes(upper, 10) == b"abcd"
    with pytest.raises(ImageInputError) as caught:  # refused from the length, undecoded
        data_uri_bytes(data_uri(b"x" * 11), 10)
    assert (caught.value.status, caught.value.code) == (413, "image_too_large")
    assert data_uri_bytes(data_uri(b"x" * 10), 10) == b"x" * 10


def test_vlm_body_limit_makes_room_for_the_images() -> None:
    limits = ImageLimits(max_images=2, max_bytes=3000)
    assert limits.max_base64_chars >= 2 * len(data_uri(b"x" * 3000))
    with pytest.raises(ValueError, match="max_images"):
        ImageLimits(max_images=0)


def test_serve_cli_takes_image_limits() -> None:
    args = serve_main.parse_args(["--model", "m", "--max-image-bytes", "100",
                                  "--max-images", "3"])
    assert (args.max_image_bytes, args.max_images) == (100, 3)
    defaults = serve_main.parse_args(["--model", "m"])
    assert defaults.max_image_bytes == ImageLimits().max_bytes
