"""The OpenAI chat-completions request, as far as this server implements it.

Fields a client may send but this server has no use for (`user`, `metadata`, `store`, ...) are
ignored, as OpenAI-compatible servers usually do. Fields that would change what comes back and
that we cannot honour (`n` > 1, non-text content parts, unknown roles) are rejected with a 400.
Nullable fields accept an explicit null and mean "the default", since some clients send that.
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


class ChatMessage(BaseModel):
    """One turn. Content is a string or a list of `{"type": "text", "text": ...}` parts."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | None = None  # None: an assistant turn that only calls tools
    tool_calls: list[ToolCall] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, content: Any) -> Any:
        if isinstance(content, list):
            return "\n".join(_text_of_part(part) for part in content)
        return content

    def for_template(self) -> dict[str, Any]:
        """The message as the chat template reads it."""
        message: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return message


def _text_of_part(part: Any) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise ValueError('content parts must be {"type": "text", "text": "..."}: '
                     "this model reads text only")


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
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
