"""OpenAI-shaped response objects with attribute access (`res.choices[0].message.content`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class _Response:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Usage(_Response):
    completion_tokens: int
    prompt_tokens: int
    total_tokens: int
    avg_tok_per_sec: float
    avg_prompt_tok_per_sec: float
    avg_compl_tok_per_sec: float
    total_time_sec: float
    total_prompt_time_sec: float
    total_completion_time_sec: float


@dataclass
class TopLogprob(_Response):
    token: int
    logprob: float
    bytes: str


@dataclass
class ResponseLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


@dataclass
class Logprobs(_Response):
    content: list[ResponseLogprob] | None


@dataclass
class ResponseMessage(_Response):
    content: str
    role: str = "assistant"


@dataclass
class Choice(_Response):
    finish_reason: str
    index: int
    message: ResponseMessage
    logprobs: Logprobs | None = None


@dataclass
class ChatCompletionResponse(_Response):
    id: str
    choices: list[Choice]
    created: int
    model: str
    system_fingerprint: str
    object: str
    usage: Usage


@dataclass
class CompletionChoice(_Response):
    finish_reason: str
    index: int
    text: str
    logprobs: Logprobs | None = None


@dataclass
class CompletionResponse(_Response):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    system_fingerprint: str
    object: str
    usage: Usage


@dataclass
class Delta(_Response):
    content: str
    role: str = "assistant"


@dataclass
class ChunkChoice(_Response):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Logprobs | None = None


@dataclass
class ChatCompletionChunkResponse(_Response):
    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    system_fingerprint: str
    object: str = "chat.completion.chunk"
    usage: Usage | None = None


@dataclass
class CompletionChunkChoice(_Response):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: Logprobs | None = None


@dataclass
class CompletionChunkResponse(_Response):
    id: str
    choices: list[CompletionChunkChoice]
    created: int
    model: str
    system_fingerprint: str
    object: str = "text_completion"
    usage: Usage | None = None
