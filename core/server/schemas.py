"""HTTP request and response bodies as pydantic models: the seed's `ChatCompletionRequest`
fields, OpenAI's (`seed`, `stream_options`, `response_format`, `max_completion_tokens`, `user`)
and the seed's sampling extras (`top_k`, `min_p`, `repetition_penalty`).

A field this server does not implement (tools, audio, `suffix`, `best_of`, ...) is not declared,
so a request that sends it gets a 400 naming it instead of having it silently ignored. Response
bodies are the Python API's own dataclasses (`mistralrs.api.responses`), used as is.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mistralrs.api.requests import ChatCompletionRequest, CompletionRequest
from mistralrs.engine.params import MAX_BIAS
from mistralrs.errors import InvalidRequestError

MAX_CHOICES = 128
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256

TokenId = Annotated[int, Field(ge=0)]
TokenIdKey = Annotated[int, Field(ge=0, strict=False)]
"""JSON object keys are strings: "42" is token 42."""
StopString = Annotated[str, Field(max_length=MAX_STOP_LENGTH)]
Bias = Annotated[float, Field(ge=-MAX_BIAS, le=MAX_BIAS)]


class _Body(BaseModel):
    """Strict: JSON types as the schema says (no "3" for 3, no true for 1.0), as OpenAI does."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(_Body):
    """One part of a message's content; text-only models take text parts."""

    type: Literal["text"]
    text: str


class Message(_Body):
    role: str = Field(description="system, user or assistant (or any role the chat template "
                                  "knows)")
    content: str | list[TextPart]
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool = Field(False, description="send a last chunk, with no choices, holding "
                                                   "the usage of the whole request")


class ResponseFormat(BaseModel):
    """OpenAI's response_format; only `text` is supported (there is no constrained decoding)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class _GenerationBody(_Body):
    model: str = Field("", description="the served model's id; any name is accepted unless the "
                                       "server runs with --served-model-name")
    max_tokens: int | None = Field(None, ge=0, description="default: until a stop condition "
                                                           "or the server's --max-tokens-limit")
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    temperature: float | None = Field(None, ge=0, description="0 is greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1, description="-1 or 0: all tokens")
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-MAX_BIAS, le=MAX_BIAS)
    frequency_penalty: float | None = Field(None, ge=-MAX_BIAS, le=MAX_BIAS)
    repetition_penalty: float | None = Field(None, ge=1 / MAX_BIAS, le=MAX_BIAS)
    logit_bias: dict[TokenIdKey, Bias] | None = Field(
        None, description="token id (as a string key) -> bias added to its logit")
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)] \
        | TokenId | Annotated[list[TokenId], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description="stop strings, or stop token ids (the seed's StopTokens)")
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="an end-user id; accepted and ignored")

    def _common(self, model: str) -> dict[str, Any]:
        return dict(model=model, n=self.n, temperature=self.temperature, top_p=self.top_p,
                    top_k=self.top_k, min_p=self.min_p, presence_penalty=self.presence_penalty,
                    frequency_penalty=self.frequency_penalty,
                    repetition_penalty=self.repetition_penalty, logit_bias=self.logit_bias,
                    stop=self.stop, seed=self.seed, stream=self.stream)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionBody(_GenerationBody):
    messages: Annotated[list[Message], Field(min_length=1)] | str = Field(
        description="the conversation, or a string used as the prompt text as is")
    max_completion_tokens: int | None = Field(None, ge=0,
                                              description="OpenAI's newer name for max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None

    def requested_max_tokens(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise InvalidRequestError("max_tokens and max_completion_tokens differ; send one")
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens

    def to_request(self, model: str, max_tokens: int | None) -> ChatCompletionRequest:
        if self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequestError(f"response_format type {self.response_format.type!r} is "
                                      "not supported: this server has no constrained decoding")
        messages = self.messages if isinstance(self.messages, str) else \
            [m.model_dump(exclude_none=True) for m in self.messages]
        return ChatCompletionRequest(messages=messages, max_tokens=max_tokens,
                                     logprobs=self.logprobs, top_logprobs=self.top_logprobs,
                                     **self._common(model))


class CompletionBody(_GenerationBody):
    prompt: str | Annotated[list[TokenId], Field(min_length=1)] = Field(
        description="the text to continue, or its token ids")
    echo: bool = Field(False, description="start each choice's text with the prompt")
    logprobs: int | None = Field(None, ge=0, le=20,
                                 description="return logprobs with this many top alternatives")

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def to_request(self, model: str, max_tokens: int | None) -> CompletionRequest:
        return CompletionRequest(prompt=self.prompt, echo_prompt=self.echo, max_tokens=max_tokens,
                                 logprobs=self.logprobs is not None,
                                 top_logprobs=self.logprobs, **self._common(model))


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
