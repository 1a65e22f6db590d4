"""An OpenAI-compatible HTTP API over one chat model: /v1/models and /v1/chat/completions.

Any OpenAI client (the official `openai` package, curl, chat front-ends) can talk to it by
pointing its base URL at `http://host:port/v1`. Every error, from bad JSON to an unknown route,
comes back in OpenAI's `{"error": {"message", "type", "param", "code"}}` shape with a 4xx
status; a 500 means a bug in the server, never bad input.

A vision-language model also takes OpenAI `image_url` content parts in user messages, as base64
data URIs (the server is offline and fetches nothing); each image is checked like a training
image (`image_input`) and takes the place of its part in the text, as an `<image>` marker. An
omni model also takes `input_audio` parts (`{"data": "<base64 WAV>", "format": "wav"}`), each
checked and normalised like a training clip (`audio_io`) and placed as an `<audio>` marker.

Started with a Talker, the server also speaks: a request with `modalities: ["text", "audio"]`
gets `message.audio = {"id", "data": base64 WAV of the whole reply, "transcript", "expires_at"}`
beside the usual `content` (kept, so text-only clients still read the reply). Streamed, the
sound comes as `delta.audio = {"id", "data": base64 WAV of one chunk}` events between the text
deltas, as soon as the Talker has it, and one `delta.audio = {"id", "transcript",
"expires_at"}` before the finish. The server keeps no audio: `expires_at` is the creation time,
and an id cannot be referred to by a later request.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from minimind.data.audio import AudioCheckConfig
from minimind.data.images import ImageCheckConfig
from minimind.data.vlm_tokens import AUDIO_MARKER, AUDIO_PAD, IMAGE_MARKER, IMAGE_PAD
from minimind.serve.audio_io import (
    DEFAULT_MAX_AUDIO_BYTES,
    DEFAULT_MAX_AUDIO_CLIPS,
    AudioInputError,
    AudioLimits,
    load_clip,
    wav_base64,
)
from minimind.serve.engine import ChatEngine, Delta, GenerationSettings
from minimind.serve.image_input import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    ImageInputError,
    ImageLimits,
    load_image,
)
from minimind.serve.schemas import AudioPart, ChatCompletionRequest, ImagePart
from minimind.serve.worker import GenerationWorker

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_LIMIT = 1024
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
STREAM_AUDIO_CHUNK_FRAMES = 8  # codec frames per streamed audio chunk (0.19 s of rvq-mel speech)


class OpenAIError(Exception):
    """An error to send to the client as an OpenAI-shaped JSON body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param,
                "code": self.code}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


@dataclass(frozen=True)
class Limits:
    """Request limits, all in tokens."""

    context_length: int     # the model's positions: prompt + reply must fit
    max_prompt_tokens: int
    max_tokens_limit: int   # the most a request may ask for, and the default when it asks none


def create_app(
    model_dir: str | Path,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    max_prompt_tokens: int | None = None,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    max_request_bytes: int | None = None,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_images: int = DEFAULT_MAX_IMAGES,
    image_checks: ImageCheckConfig | None = None,
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
    max_audio_clips: int = DEFAULT_MAX_AUDIO_CLIPS,
    audio_checks: AudioCheckConfig | None = None,
    talker: str | Path | None = None,
    device: str | None = None,
) -> FastAPI:
    """Load the model folder and build the app serving it under `model_name`.

    model_name: the id clients pass as `model` (default: the folder's name).
    api_key: if set, every /v1 request needs `Authorization: Bearer <api_key>`.
    max_prompt_tokens: longest accepted prompt (default: the context minus room for a reply).
    max_tokens_limit: most completion tokens a request may ask for.
    max_request_bytes: larger request bodies get a 413 (default: 1 MiB, plus room for
        `max_images` base64 images of `max_image_bytes` when the model reads images, and for
        `max_audio_clips` clips of `max_audio_bytes` when it hears audio).
    max_image_bytes: a larger image (decoded from base64) gets a 413.
    max_images: most images one request may hold.
    image_checks: the pixel-size limits (sides, pixels) images must pass, as in the clean
        stage (default: clean's defaults); its `max_bytes` is replaced by `max_image_bytes`.
    max_audio_bytes: a larger audio clip (decoded from base64, before resampling) gets a 413.
    max_audio_clips: most audio clips one request may hold.
    audio_checks: the duration limits clips must pass, as in the clean stage (default: clean's
        defaults, 0.1 to 30 s); its `max_bytes` is replaced by `max_audio_bytes`.
    talker: a Talker folder (`save_talker`) that reads this model's states: replies can then
        be spoken (`modalities: ["text", "audio"]`).
    device: where the model runs (default: cuda if available, else cpu).
    """
    engine = ChatEngine.from_folder(model_dir, device, talker)
    limits = _limits(engine.context_length, max_prompt_tokens, max_tokens_limit)
    image_limits = ImageLimits(max_images, max_image_bytes, image_checks or ImageCheckConfig())
    audio_limits = AudioLimits(max_audio_clips, max_audio_bytes,
                               audio_checks or AudioCheckConfig())
    if max_request_bytes is None:
        max_request_bytes = (
            DEFAULT_MAX_REQUEST_BYTES
            + (image_limits.max_base64_chars if engine.reads_images else 0)
            + (audio_limits.max_base64_chars if engine.hears_audio else 0))
    name = model_name or Path(model_dir).resolve().name
    worker = GenerationWorker(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="MiniMind chat", lifespan=lifespan)
    app.state.engine = engine
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    _install_error_handlers(app)
    authorised = Depends(_bearer_check(api_key))
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.get("/v1/models", dependencies=[authorised])
    async def list_models() -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": created, "owned_by": "minimind"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", dependencies=[authorised], response_model=None)
    async def chat_completions(request: ChatCompletionRequest
                               ) -> dict[str, Any] | StreamingResponse:
        if request.model != name:
            raise OpenAIError(404, f"The model '{request.model}' does not exist; this server "
                              f"serves '{name}'.", param="model", code="model_not_found")
        audio_rate = None  # the sample rate of a spoken reply; None: text only
        if request.wants_audio:
            if engine.codec is None:
                raise OpenAIError(400, "This server cannot answer with audio: it was started "
                                  "without a Talker (--talker DIR). Ask for modalities "
                                  "[\"text\"].", param="modalities",
                                  code="audio_output_not_supported")
            audio_rate = engine.codec.sample_rate
        media = await run_in_threadpool(_request_media, engine, request, image_limits,
                                        audio_limits)
        prompt_ids = await run_in_threadpool(_encode_prompt, engine, request, media.clips)
        settings = _generation_settings(request, len(prompt_ids), limits)
        envelope = Envelope(model=name, prompt_tokens=len(prompt_ids))
        deltas = worker.stream(prompt_ids, settings, media.images, media.clips)
        if request.stream:
            events = _sse_events(envelope, deltas, request.include_usage, audio_rate)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _completion(envelope, deltas, audio_rate)

    return app


class BodySizeLimit:
    """413 for request bodies over `max_bytes`, by their Content-Length or as they arrive.

    (FastAPI's own `max_body_size` answers a too-large Content-Length in plain text.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large().response()(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413)  # FastAPI lets HTTPExceptions out of body parsing
            return message

        await self.app(scope, receive_within_limit, send)


def _too_large() -> OpenAIError:
    return OpenAIError(413, "The request body is too large.", code="request_too_large")


def _limits(context_length: int, max_prompt_tokens: int | None, max_tokens_limit: int) -> Limits:
    if not 0 < max_tokens_limit < context_length:
        raise ValueError(f"max_tokens_limit must be in 1..{context_length - 1}, "
                         f"got {max_tokens_limit}")
    if max_prompt_tokens is None:
        max_prompt_tokens = context_length - min(max_tokens_limit, context_length // 2)
    if not 0 < max_prompt_tokens < context_length:
        raise ValueError(f"max_prompt_tokens must be in 1..{context_length - 1}, "
                         f"got {max_prompt_tokens}")
    return Limits(context_length, max_prompt_tokens, max_tokens_limit)


def _bearer_check(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A dependency that accepts only `Authorization: Bearer <api_key>` (anything if None)."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise OpenAIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                              code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")

    return check


@dataclass(frozen=True)
class Media:
    """A request's images and audio clips (float32 16 kHz mono), each in prompt order."""

    images: list[Image.Image]
    clips: list[np.ndarray]


def _request_media(engine: ChatEngine, request: ChatCompletionRequest, image_limits: ImageLimits,
                   audio_limits: AudioLimits) -> Media:
    """The request's images and clips, decoded and checked; a 4xx for any refused.

    The checks that need no decoding come first (does the model read images or hear audio,
    are they in user turns, how many), so a refused request decodes nothing.
    """
    images: list[tuple[str, ImagePart]] = []
    clips: list[tuple[str, AudioPart]] = []
    for i, message in enumerate(request.messages):
        where = f"messages[{i}].content"
        for j, part in enumerate(message.parts):
            param = f"{where}[{j}]" if isinstance(message.content, list) else where
            if isinstance(part, ImagePart):
                images.append((param, part))
            elif isinstance(part, AudioPart):
                clips.append((param, part))
            else:
                _check_no_markers(engine, part.text, param)
        if message.role != "user" and ((message.images and engine.reads_images)
                                       or (message.clips and engine.hears_audio)):
            raise OpenAIError(400, f"Images and audio are accepted in user messages only, not "
                              f"in a {message.role!r} message.", param=where,
                              code="invalid_value")
    if images and not engine.reads_images:
        raise OpenAIError(400, "This model reads text only: image_url content parts are not "
                          "supported.", param=images[0][0], code="images_not_supported")
    if clips and not engine.hears_audio:
        raise OpenAIError(400, "This model does not hear audio: input_audio content parts are "
                          "not supported.", param=clips[0][0], code="audio_not_supported")
    if len(images) > image_limits.max_images:
        raise OpenAIError(400, f"The request holds {len(images)} images; this server accepts "
                          f"at most {image_limits.max_images}.", param="messages",
                          code="too_many_images")
    if len(clips) > audio_limits.max_clips:
        raise OpenAIError(400, f"The request holds {len(clips)} audio clips; this server "
                          f"accepts at most {audio_limits.max_clips}.", param="messages",
                          code="too_many_audio_clips")
    return Media(
        [_decoded(param, load_image, part.url, image_limits) for param, part in images],
        [_decoded(param, load_clip, part.data, part.format, audio_limits)
         for param, part in clips])


def _decoded(param: str, load: Callable[..., Any], *args: Any) -> Any:
    """`load(*args)`, with a refused image or clip turned into the client's 4xx at `param`."""
    try:
        return load(*args)
    except (ImageInputError, AudioInputError) as error:
        raise OpenAIError(error.status, error.message, param=param, code=error.code) from None


def _check_no_markers(engine: ChatEngine, text: str, param: str) -> None:
    """Refuse media markers typed as text: they would stand for an image or clip not sent."""
    for marker, pad, read, kind, part in (
            (IMAGE_MARKER, IMAGE_PAD, engine.reads_images, "image", "an image_url"),
            (AUDIO_MARKER, AUDIO_PAD, engine.hears_audio, "audio clip", "an input_audio")):
        if read and (marker in text or pad in text):
            raise OpenAIError(400, f"Text may not contain {marker} or {pad} itself: send each "
                              f"{kind} as {part} content part, placed where the {kind} "
                              "belongs.", param=param, code="invalid_value")


def _encode_prompt(engine: ChatEngine, request: ChatCompletionRequest,
                   clips: list[np.ndarray]) -> list[int]:
    messages = [message.for_template(IMAGE_MARKER, AUDIO_MARKER) for message in request.messages]
    try:
        return engine.prompt_ids(messages, tools=request.tools, clips=clips)
    except TemplateError as error:
        raise OpenAIError(400, f"The messages do not fit the chat template: {error}",
                          param="messages") from error


def _generation_settings(request: ChatCompletionRequest, prompt_tokens: int,
                         limits: Limits) -> GenerationSettings:
    """Check the request against the limits and turn it into sampling settings."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise OpenAIError(400, f"The prompt is {prompt_tokens} tokens long; this server accepts "
                          f"at most {limits.max_prompt_tokens}.", param="messages",
                          code="context_length_exceeded")
    room = limits.context_length - prompt_tokens
    requested = request.requested_max_tokens
    param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    if requested is not None and requested > limits.max_tokens_limit:
        raise OpenAIError(400, f"{param} is {requested}; this server allows at most "
                          f"{limits.max_tokens_limit}.", param=param, code="invalid_value")
    if requested is not None and requested > room:
        raise OpenAIError(400, f"This model's maximum context length is "
                          f"{limits.context_length} tokens, but {prompt_tokens + requested} "
                          f"were requested ({prompt_tokens} in the messages, {requested} in "
                          "the completion).", param=param, code="context_length_exceeded")
    return GenerationSettings(
        max_new_tokens=requested or min(limits.max_tokens_limit, room),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        stop=request.stop_strings,
        seed=request.seed,
        speak=request.wants_audio,
        audio_chunk_frames=STREAM_AUDIO_CHUNK_FRAMES if request.stream else None,
    )


@dataclass(frozen=True)
class Envelope:
    """What every response object of one completion shares: ids, timestamp, model, prompt
    size."""

    model: str
    prompt_tokens: int
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    audio_id: str = field(default_factory=lambda: f"audio_{uuid.uuid4().hex}")

    def header(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def audio(self, **fields: Any) -> dict[str, Any]:
        """A spoken reply's `audio` object holding `fields`."""
        return {"id": self.audio_id, **fields}

    def audio_end(self, transcript: str) -> dict[str, Any]:
        """The closing `audio` fields: the transcript, and an expiry that has already come,
        since the server keeps no audio for later requests to refer to."""
        return self.audio(transcript=transcript, expires_at=self.created)


async def _completion(envelope: Envelope, deltas: AsyncIterator[Delta],
                      audio_rate: int | None) -> dict[str, Any]:
    """The whole reply as one `chat.completion` object; spoken (at `audio_rate` Hz) unless
    `audio_rate` is None."""
    pieces = [delta async for delta in deltas]
    text = "".join(delta.text for delta in pieces)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if audio_rate is not None:
        sound = [delta.audio for delta in pieces if delta.audio is not None]
        samples = np.concatenate(sound) if sound else np.zeros(0, np.float32)
        message["audio"] = {**envelope.audio_end(text),
                            "data": wav_base64(samples, audio_rate)}
    choice = {"index": 0, "message": message, "finish_reason": pieces[-1].finish_reason,
              "logprobs": None}
    return {**envelope.header("chat.completion"), "choices": [choice],
            "usage": envelope.usage(pieces[-1].completion_tokens)}


async def _sse_events(envelope: Envelope, deltas: AsyncIterator[Delta], include_usage: bool,
                      audio_rate: int | None) -> AsyncIterator[str]:
    """The reply as server-sent `chat.completion.chunk` events, ending with `[DONE]`; its sound
    (at `audio_rate` Hz, unless None) in WAV chunks as it comes, then the transcript."""

    def event(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        payload = {**envelope.header("chat.completion.chunk"), "choices": [choice]}
        return event({**payload, "usage": None} if include_usage else payload)

    yield chunk({"role": "assistant", "content": ""})
    completion_tokens = 0
    transcript: list[str] = []
    try:
        async for delta in deltas:
            if delta.text:
                yield chunk({"content": delta.text})
                transcript.append(delta.text)
            if delta.audio is not None and audio_rate is not None:
                data = wav_base64(delta.audio, audio_rate)
                yield chunk({"audio": envelope.audio(data=data)})
            if delta.finish_reason:
                if audio_rate is not None:
                    yield chunk({"audio": envelope.audio_end("".join(transcript))})
                yield chunk({}, delta.finish_reason)
                completion_tokens = delta.completion_tokens
    except Exception:  # the 200 header is already sent: report the failure in the stream
        logger.exception("generation failed mid-stream")
        yield event({"error": {"message": "The server failed while generating the reply.",
                               "type": "server_error", "param": None, "code": None}})
        return
    if include_usage:
        usage = {**envelope.header("chat.completion.chunk"), "choices": [],
                 "usage": envelope.usage(completion_tokens)}
        yield event(usage)
    yield "data: [DONE]\n\n"


def _install_error_handlers(app: FastAPI) -> None:
    """Render every error, ours or the framework's, in OpenAI's shape."""

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, error: OpenAIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(error.errors()[0]).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 413:
            return _too_large().response()
        if error.status_code == 404:
            return OpenAIError(404, f"Unknown request URL: {request.method} {request.url.path}",
                               code="unknown_url").response()
        return OpenAIError(error.status_code, str(error.detail)).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the error after this response, so the server logs the traceback.
        return OpenAIError(500, "The server had an internal error.", kind="server_error"
                           ).response()


def _validation_error(detail: dict[str, Any]) -> OpenAIError:
    """A 400 for the first problem FastAPI found in the request body."""
    if detail["type"] == "json_invalid":
        reason = detail.get("ctx", {}).get("error", "invalid JSON")
        return OpenAIError(400, f"We could not parse the JSON body of your request: {reason}.",
                           code="invalid_json")
    param = _param_path(detail["loc"])
    code = "missing_required_parameter" if detail["type"] == "missing" else "invalid_value"
    where = f" for '{param}'" if param else ""
    return OpenAIError(400, f"Invalid value{where}: {detail['msg']}", param=param, code=code)


def _param_path(loc: tuple[Any, ...]) -> str | None:
    """FastAPI's ("body", "messages", 0, "role") as OpenAI's "messages[0].role"."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or None
