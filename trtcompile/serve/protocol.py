"""The OpenAI request bodies the server accepts, and its error body.

Requests are validated here, once: unknown fields are refused (a typo in `max_tokens` must not
silently fall back to a default), and fields OpenAI defines but this server cannot honour are
accepted only at their neutral value (`n: 1`, `presence_penalty: 0`, ...), so a client sending
the defaults works and one asking for more is told which field is unsupported.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class Neutral(Strict):
    """OpenAI sampling fields this server does not implement, accepted at their no-op values."""

    n: Literal[1] = 1
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logprobs: Literal[False, None] = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value):
        if value:
            raise ValueError("logit_bias is not supported by this server; leave it out")
        return value


class Sampling(Neutral):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @property
    def stop_strings(self) -> list[str]:
        return list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: None = None

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Sampling):
    # One prompt (n=1): text, or token ids; a list holding one of them is accepted too.
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: Literal[False] = False
    best_of: Literal[1, None] = None
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise ValueError(f"this server takes one prompt per request, got {len(value)}; send them separately")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(Strict):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value):
        if not value or (isinstance(value, list) and any(not v for v in value if isinstance(v, (str, list)))):
            raise ValueError("input must be a non-empty string, list of strings, or token ids")
        return value

    def rows(self) -> list[str | list[int]]:
        """One entry per embedding asked for: a text, or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [list(self.input)]
        return list(self.input)


def parse(body: bytes, schema: type[BaseModel]):
    """The validated request, or an APIError(400) naming the offending field and what it accepts."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object", code="invalid_json")
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, schema) from None


def validation_error(exc: ValidationError, schema: type[BaseModel]) -> APIError:
    err = exc.errors(include_url=False)[0]
    # Union members repeat the location with their type name (e.g. "prompt.str"): keep the field path.
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
    param = ".".join(loc) or None
    if err["type"] == "extra_forbidden":
        fields = ", ".join(sorted(schema.model_fields)) if len(loc) == 1 else None
        known = f"; accepted fields: {fields}" if fields else ""
        return APIError(400, f"unknown field '{param}'{known}", param=param, code="unknown_field")
    if err["type"] == "missing":
        return APIError(400, f"'{param}' is required", param=param, code="missing_field")
    value = json.dumps(err.get("input"), default=str)
    if len(value) > 80:
        value = value[:77] + "..."
    message = err["msg"].removeprefix("Value error, ")
    return APIError(400, f"'{param}' = {value} is invalid: {message}", param=param, code="invalid_value")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}
