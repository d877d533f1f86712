"""What a request asks of generation, validated before any work starts."""
from __future__ import annotations

from dataclasses import dataclass, field

from mistralrs.errors import InvalidRequestError


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

    def validate(self, vocab_size: int) -> None:
        def bad(field_name: str, why: str):
            raise InvalidRequestError(f"{field_name} {why}")

        if self.max_tokens is not None and self.max_tokens < 0:
            bad("max_tokens", f"must be >= 0, got {self.max_tokens}")
        if self.temperature < 0:
            bad("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        if self.n < 1:
            bad("n", f"must be >= 1, got {self.n}")
        if self.top_logprobs < 0 or self.top_logprobs > 20:
            bad("top_logprobs", f"must be between 0 and 20, got {self.top_logprobs}")
        unknown = [t for t in list(self.logit_bias) + list(self.stop_token_ids)
                   if not 0 <= t < vocab_size]
        if unknown:
            bad("token ids", f"{unknown} are outside the vocabulary (0..{vocab_size - 1})")
