"""Batched sampling where every row keeps its own parameters: penalties, filters, draw, logprobs.

The model runner calls, per step: `apply_penalties` on the last-position logits, then `sample`,
then `compute_logprobs` (on the raw logits) for the requests that asked for logprobs. Triton runs
when the logits are on a GPU, the torch reference (`sampling_reference`) otherwise; both give the
same tokens from the same (seed, step), whatever the batch around a row.
"""
from __future__ import annotations

import torch

from .sampling_reference import apply_penalties_reference, sample_reference
from .sampling_tensors import SamplingTensors, uniform_for_rows
from .sampling_triton import apply_penalties_triton, sample_triton

__all__ = ["SamplingTensors", "apply_penalties", "compute_logprobs", "sample", "uniform_for_rows"]


def apply_penalties(logits: torch.Tensor, tensors: SamplingTensors, output_tokens: torch.Tensor,
                    window_tokens: torch.Tensor) -> torch.Tensor:
    """float32 [B, V] logits -> new float32 [B, V] logits with penalties then logit bias applied.

    - repetition penalty (HF / llama.cpp), over the distinct ids of `window_tokens` (int64
      [B, L2], -1 padded: the last repeat_last_n tokens of prompt and output):
      logit > 0 ? logit / penalty : logit * penalty;
    - presence and frequency penalties (OpenAI), over `output_tokens` (int64 [B, L1], -1 padded:
      the tokens generated so far): logit -= frequency * count + presence * (count > 0);
    - logit bias: logit[bias_ids] += bias_values.
    """
    implementation = apply_penalties_triton if logits.is_cuda else apply_penalties_reference
    return implementation(logits, tensors, output_tokens, window_tokens)


def sample(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    """float32 [B, V] logits -> int64 [B] tokens, one draw per row with that row's parameters.

    temperature 0: argmax (lowest index on ties). Otherwise, over probs = softmax(logits / T), keep
    the tokens passing every enabled filter, each judged on those same probs (not renormalised
    one after the other as transformers chains its warpers):
    - top_k: prob >= the k-th largest prob (ties all kept);
    - top_p: prob >= the largest threshold whose mass of probs at or above it reaches top_p (the
      smallest set of most likely tokens reaching top_p; top_p 0 keeps the most likely);
    - min_p: prob >= min_p * the largest prob.
    Then, with u = uniform_for_rows(seed, step), the first token in vocabulary order at which the
    cumulative kept mass exceeds u * the total kept mass.
    """
    implementation = sample_triton if logits.is_cuda else sample_reference
    return implementation(logits, tensors)


def compute_logprobs(logits: torch.Tensor, chosen: torch.Tensor,
                     top_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_softmax of the raw logits at the chosen tokens, and its top_n largest per row.

    Returns (chosen float32 [B], top ids int64 [B, top_n], top float32 [B, top_n]), the tops
    sorted descending. Plain torch on every device: log_softmax and topk are already
    single fused library kernels, so a Triton version would buy nothing.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen_logprob = logprobs.gather(1, chosen[:, None])[:, 0]
    top_logprobs, top_ids = logprobs.topk(top_n, dim=-1, sorted=True)
    return chosen_logprob, top_ids, top_logprobs
