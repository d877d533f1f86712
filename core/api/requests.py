"""Request types of the seed Python API (the OpenAI request fields, plus mistral.rs's own)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mistralrs.engine.params import SamplingParams
from mistralrs.errors import InvalidRequestError

Stop = str | list[str] | int | list[int] | None


def _split_stop(stop: Stop) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The seed's StopTokens: Single(str), Multi([str]), SingleId(int), MultiId([int])."""
    if stop is None:
        return (), ()
    items = stop if isinstance(stop, (list, tuple)) else [stop]
    strings = tuple(s for s in items if isinstance(s, str))
    ids = tuple(int(s) for s in items if isinstance(s, int) and not isinstance(s, bool))
    if len(strings) + len(ids) != len(items):
        raise InvalidRequestError("stop must be a string, a token id, or a list of either")
    return strings, ids


@dataclass
class _GenerationFields:
    model: str = "default"
    logit_bias: dict[int, float] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: Stop = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stream: bool = False

    def sampling_params(self, repeat_last_n: int = 64) -> SamplingParams:
        stop_strings, stop_ids = _split_stop(self.stop)
        try:
            bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        except (TypeError, ValueError):
            raise InvalidRequestError("logit_bias must map token ids to numbers") from None
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=1.0 if self.temperature is None else float(self.temperature),
            top_k=-1 if self.top_k is None else int(self.top_k),
            top_p=1.0 if self.top_p is None else float(self.top_p),
            min_p=0.0 if self.min_p is None else float(self.min_p),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            repeat_last_n=repeat_last_n,
            logit_bias=bias,
            seed=self.seed,
            n=self.n,
            stop_strings=stop_strings,
            stop_token_ids=stop_ids,
            logprobs=bool(self.logprobs),
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else 0,
        )


def _aliases(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Accept the names mistral.rs's own Python package uses: `n_choices`, `stop_seqs`."""
    for alias, name in (("n_choices", "n"), ("stop_seqs", "stop")):
        if alias in kwargs:
            if name in kwargs:
                raise InvalidRequestError(f"pass either {name} or {alias}, not both")
            kwargs[name] = kwargs.pop(alias)
    return kwargs


class ChatCompletionRequest(_GenerationFields):
    """`messages` is a list of {"role", "content"} dicts (rendered with the chat template) or a
    plain string (used as the prompt text as is)."""

    def __init__(self, messages: list[dict[str, Any]] | str, model: str = "default", **kwargs):
        super().__init__(model=model, **_aliases(kwargs))
        self.messages = messages


class CompletionRequest(_GenerationFields):
    def __init__(self, prompt: str | list[int], model: str = "default", echo_prompt: bool = False,
                 best_of: int | None = None, suffix: str | None = None, **kwargs):
        super().__init__(model=model, **_aliases(kwargs))
        self.prompt = prompt
        self.echo_prompt = echo_prompt
        self.best_of = best_of
        self.suffix = suffix


Request = ChatCompletionRequest
"""The legacy loader API's name for a chat request (seed 000)."""
