"""The OpenAI chat-completions request, as far as this server implements it.

Fields a client may send but this server has no use for (`user`, `metadata`, `store`, ...) are
ignored, as OpenAI-compatible servers usually do. Fields that would change what comes back and
that we cannot honour (`n` > 1, content parts other than text, image_url and input_audio,
unknown roles, audio out in another format than WAV) are rejected with a 400. Nullable fields
accept an explicit null and mean "the default", since some clients send that.

Image and audio parts are only parsed here (their place among the text and their data); whether
the served model reads images or hears audio, and whether the image or clip itself is
acceptable, the app decides. Likewise `modalities: ["text", "audio"]` only asks for a spoken
reply; whether the server has a Talker to speak it, the app decides.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_LENGTH = 256  # characters; streaming rescans each stop string's prefixes per token

Role = Literal["system", "user", "assistant", "tool"]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    """A call an earlier assistant turn made; the template renders it as <tool_call>."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    text: str


class ImagePart(BaseModel):
    url: str  # `data:image/...;base64,...`; anything else is refused by the app


class AudioPart(BaseModel):
    data: str  # base64 of the encoded clip; decoded and checked by the app
    format: str | None = None  # OpenAI's "wav" / "mp3": what the client says it sent


ContentPart = TextPart | ImagePart | AudioPart


class ChatMessage(BaseModel):
    """One turn. Content is a string or a list of text, image_url and input_audio parts."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[ContentPart] | None = None  # None: a turn that only calls tools
    tool_calls: list[ToolCall] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parse_parts(cls, content: Any) -> Any:
        if isinstance(content, list):
            return [_parse_part(part) for part in content]
        return content

    @property
    def parts(self) -> list[ContentPart]:
        if isinstance(self.content, list):
            return self.content
        return [TextPart(text=self.content)] if self.content else []

    @property
    def images(self) -> list[ImagePart]:
        return [part for part in self.parts if isinstance(part, ImagePart)]

    @property
    def clips(self) -> list[AudioPart]:
        return [part for part in self.parts if isinstance(part, AudioPart)]

    def for_template(self, image_marker: str = "", audio_marker: str = "") -> dict[str, Any]:
        """The message as the chat template reads it; each image part becomes `image_marker`
        and each audio part `audio_marker`.

        Parts are joined with newlines, the layout of the training data
        (`"<image>\nDescribe the image."`, `"<image>\n<audio>"`).
        """
        markers = {ImagePart: image_marker, AudioPart: audio_marker}
        text = "\n".join(part.text if isinstance(part, TextPart) else markers[type(part)]
                         for part in self.parts)
        message: dict[str, Any] = {"role": self.role, "content": text}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return message


def _parse_part(part: Any) -> ContentPart:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return TextPart(text=part["text"])
    image = part.get("image_url") if kind == "image_url" else None
    if isinstance(image, dict) and isinstance(image.get("url"), str):
        return ImagePart(url=image["url"])
    audio = part.get("input_audio") if kind == "input_audio" else None
    if (isinstance(audio, dict) and isinstance(audio.get("data"), str)
            and isinstance(audio.get("format"), str | None)):
        return AudioPart(data=audio["data"], format=audio.get("format"))
    raise ValueError('content parts must be {"type": "text", "text": "..."}, '
                     '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} '
                     'or {"type": "input_audio", "input_audio": {"data": "<base64>", '
                     '"format": "wav"}}')


class AudioOutput(BaseModel):
    """OpenAI's `audio` parameter: how a spoken reply is delivered."""

    model_config = ConfigDict(extra="ignore")

    voice: str | None = None  # accepted and ignored: a Talker speaks with the one voice it learnt
    format: str = "wav"

    @field_validator("format")
    @classmethod
    def _wav_only(cls, audio_format: str) -> str:
        if audio_format != "wav":
            raise ValueError(f"audio format {audio_format!r} is not supported; this server "
                             "answers with \"wav\" audio only")
        return audio_format


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """Body of POST /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[dict[str, Any]] | None = None  # shown to the model by the chat template
    modalities: list[Literal["text", "audio"]] | None = None  # ["text", "audio"]: speak too
    audio: AudioOutput | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported: this server returns one choice per request")
        return n

    @field_validator("stop")
    @classmethod
    def _valid_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        if any(not 0 < len(s) <= MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop strings must have 1 to {MAX_STOP_LENGTH} characters")
        return stop

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens` (the current name) wins over the older `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def wants_audio(self) -> bool:
        """Asked for a spoken reply besides the text (`modalities` holds "audio")."""
        return "audio" in (self.modalities or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
