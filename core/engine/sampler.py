"""Choosing each sequence's next token from its logits with its own sampling parameters."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mistralrs.engine.params import SamplingParams
from mistralrs.kernels.cpu import ops as cpu_ops
from mistralrs.kernels.sampling import SamplingTensors, apply_penalties, compute_logprobs, sample
from mistralrs.scheduler import Sequence


@dataclass
class TokenLogprobs:
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


def _padded(rows: list[list[int]], device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64,
                        device=device).reshape(len(rows), width)


def scan_rows(logits: torch.Tensor) -> tuple[list[int] | None, list[bool]]:
    """Per row of logits [B, V]: the first index of its largest logit (None where the native
    kernels do not apply), and whether it holds a NaN; in one pass on the CPU."""
    if cpu_ops.usable(logits):
        return cpu_ops.argmax_rows(logits)
    return None, torch.isnan(logits).any(-1).tolist()


def _plain_greedy(p: SamplingParams) -> bool:
    """Greedy, and nothing that changes the logits or asks for more than the token: the token
    is the first index of the largest logit, as `sample` would pick."""
    return (p.temperature == 0 and not p.logprobs and not p.logit_bias
            and not p.presence_penalty and not p.frequency_penalty
            and p.repetition_penalty == 1.0)


def sample_next(logits: torch.Tensor, seqs: list[Sequence], params: list[SamplingParams],
                seeds: list[int], argmax: list[int] | None = None
                ) -> tuple[list[int], list[TokenLogprobs | None]]:
    """One token per row of `logits` (row i belongs to seqs[i]); `argmax`, the rows' argmax
    when the caller has it (`scan_rows`, which on the CPU reads the logits once for it and for
    NaNs). The random stream of a sequence is (its seed, the
    number of tokens it has generated), so results do not depend on which other sequences
    share the batch."""
    if all(_plain_greedy(p) for p in params):
        if argmax is None:
            argmax = logits.argmax(-1).tolist()
        return argmax, [None] * len(seqs)
    device = logits.device
    tensors = SamplingTensors.from_rows(
        [p.temperature for p in params],
        top_k=[p.top_k for p in params],
        top_p=[p.top_p for p in params],
        min_p=[p.min_p for p in params],
        presence_penalty=[p.presence_penalty for p in params],
        frequency_penalty=[p.frequency_penalty for p in params],
        repetition_penalty=[p.repetition_penalty for p in params],
        seed=seeds,
        step=[s.num_output_tokens for s in seqs],
        logit_bias=[p.logit_bias for p in params],
        device=device,
    )
    raw = logits.float()
    penalized = raw
    if any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
           or p.logit_bias for p in params):
        penalized = apply_penalties(
            raw.clone(), tensors,
            _padded([s.output_ids for s in seqs], device),
            _padded([s.token_ids[-p.repeat_last_n:] if p.repeat_last_n > 0 else []
                     for s, p in zip(seqs, params)], device))
    tokens = sample(penalized, tensors)
    logprobs: list[TokenLogprobs | None] = [None] * len(seqs)
    if any(p.logprobs for p in params):
        top_n = max(p.top_logprobs for p in params)
        chosen, top_ids, top_values = compute_logprobs(raw, tokens, top_n)
        for i, p in enumerate(params):
            if p.logprobs:
                logprobs[i] = TokenLogprobs(float(chosen[i]), top_ids[i, :p.top_logprobs].tolist(),
                                            top_values[i, :p.top_logprobs].tolist())
    return tokens.tolist(), logprobs
