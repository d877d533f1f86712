"""What a request asks of generation, validated before any work starts."""
from __future__ import annotations

from dataclasses import dataclass, field

from mistralrs.errors import InvalidRequestError

MAX_BIAS = 100.0
"""Largest magnitude of a logit bias or a presence/frequency penalty (OpenAI's logit-bias
range); `repetition_penalty` lies in [1 / MAX_BIAS, MAX_BIAS]."""
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class SamplingParams:
    """Per-request generation settings. `temperature == 0` is greedy decoding."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    n: int = 1
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    """Keep generating past end-of-sequence tokens (benchmarks)."""

    def validate(self, vocab_size: int) -> None:
        def bad(field_name: str, why: str):
            raise InvalidRequestError(f"{field_name} {why}")

        def in_range(field_name: str, value: float, low: float, high: float):
            if not low <= value <= high:  # NaN fails too
                bad(field_name, f"must be in [{low}, {high}], got {value}")

        if self.max_tokens is not None and self.max_tokens < 0:
            bad("max_tokens", f"must be >= 0, got {self.max_tokens}")
        # The sampling kernels compute in float32 and int32: values that overflow them would
        # turn logits into inf/NaN and fail the whole batch, not just this request.
        in_range("temperature", self.temperature, 0.0, _FLOAT32_MAX)
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        in_range("min_p", self.min_p, 0.0, 1.0)
        in_range("top_k", self.top_k, -1, 2**31 - 1)  # -1 and 0: off, as the server takes it
        in_range("presence_penalty", self.presence_penalty, -MAX_BIAS, MAX_BIAS)
        in_range("frequency_penalty", self.frequency_penalty, -MAX_BIAS, MAX_BIAS)
        in_range("repetition_penalty", self.repetition_penalty, 1 / MAX_BIAS, MAX_BIAS)
        for token, value in self.logit_bias.items():
            in_range(f"logit_bias[{token}]", value, -MAX_BIAS, MAX_BIAS)
        if self.n < 1:
            bad("n", f"must be >= 1, got {self.n}")
        if self.top_logprobs < 0 or self.top_logprobs > 20:
            bad("top_logprobs", f"must be between 0 and 20, got {self.top_logprobs}")
        unknown = [t for t in list(self.logit_bias) + list(self.stop_token_ids)
                   if not 0 <= t < vocab_size]
        if unknown:
            bad("token ids", f"{unknown} are outside the vocabulary (0..{vocab_size - 1})")
