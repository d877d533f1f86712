"""Torch reference of the sampling kernels: the oracle of the Triton ones, and the CPU path.

Vectorised over the batch (no Python loop per row). The semantics, shared with the Triton
kernels, are documented on the public functions in `sampling.py`.
"""
from __future__ import annotations

import torch

from .sampling_tensors import SamplingTensors, uniform_for_rows

# How many of each row's largest values `topk` sorts at first when looking for the top-k / top-p
# thresholds, and by what factor it widens that head while some row's top-p set does not fit.
_FIRST_HEAD_WIDTH = 64
_HEAD_GROWTH = 8


def _token_counts(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """int64 [B, L] token ids, -1 padded -> float32 [B, vocab]: how often each id occurs per row."""
    padding_column = vocab  # out-of-range ids (the -1 padding) are counted here, then dropped
    ids = torch.where((tokens >= 0) & (tokens < vocab), tokens, padding_column)
    counts = torch.zeros(tokens.shape[0], vocab + 1, dtype=torch.float32, device=tokens.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab]


def apply_penalties_reference(logits: torch.Tensor, tensors: SamplingTensors,
                              output_tokens: torch.Tensor, window_tokens: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[-1]
    in_window = _token_counts(window_tokens, vocab) > 0
    repetition = tensors.repetition_penalty[:, None]
    repeated = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(in_window, repeated, logits)

    counts = _token_counts(output_tokens, vocab)
    penalty = (tensors.frequency_penalty[:, None] * counts
               + tensors.presence_penalty[:, None] * (counts > 0).to(torch.float32))
    logits = logits - penalty

    bias_ids = torch.where(tensors.bias_ids >= 0, tensors.bias_ids, vocab)
    padded = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)
    return padded.scatter_add(1, bias_ids, tensors.bias_values)[:, :vocab]


def _filter_threshold(scaled: torch.Tensor, scaled_max: torch.Tensor, weights: torch.Tensor,
                      tensors: SamplingTensors) -> torch.Tensor:
    """float32 [B]: the smallest scaled logit that passes both top-k and top-p (-inf when off).

    top-k keeps values >= the k-th largest; top-p keeps values >= the largest threshold whose
    mass reaches top_p. Both only need the head of each row sorted, so `topk` sorts a head that
    widens until it holds every row's top-k and top-p sets: on CPU, sorting all of a [16, 49152]
    batch costs ~25 ms, its 64-wide head ~0.5 ms.
    """
    rows, vocab = scaled.shape
    top_k_on = (tensors.top_k > 0) & (tensors.top_k < vocab)
    top_p_on = tensors.top_p < 1
    no_threshold = scaled.new_full((rows,), float("-inf"))
    if not bool((top_k_on | top_p_on).any()):
        return no_threshold

    p_target = tensors.top_p * weights.sum(dim=-1)
    width = min(vocab, max(_FIRST_HEAD_WIDTH, int(torch.where(top_k_on, tensors.top_k, 0).max())))
    while True:
        head = scaled.topk(width, dim=-1).values  # sorted descending
        head_mass = torch.exp(head - scaled_max).cumsum(dim=-1)
        if width == vocab or bool((head_mass[:, -1] >= p_target)[top_p_on].all()):
            break
        width = min(vocab, _HEAD_GROWTH * width)

    k_index = tensors.top_k.clamp(1, width).long() - 1
    p_index = (head_mass < p_target[:, None]).sum(dim=-1).clamp(max=width - 1)
    k_threshold = torch.where(top_k_on, head.gather(1, k_index[:, None])[:, 0], no_threshold)
    p_threshold = torch.where(top_p_on, head.gather(1, p_index[:, None])[:, 0], no_threshold)
    return torch.maximum(k_threshold, p_threshold)


def sample_reference(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    greedy = tensors.temperature <= 0
    temperature = torch.where(greedy, 1.0, tensors.temperature)
    scaled = logits / temperature[:, None]
    scaled_max = scaled.max(dim=-1, keepdim=True).values
    weights = torch.exp(scaled - scaled_max)  # probability / largest probability

    threshold = _filter_threshold(scaled, scaled_max, weights, tensors)
    keep = (scaled >= threshold[:, None]) & (weights >= tensors.min_p[:, None])
    cumulative = torch.where(keep, weights, 0.0).cumsum(dim=-1)
    target = uniform_for_rows(tensors.seed, tensors.step) * cumulative[:, -1]
    # The first index whose cumulative weight exceeds the target.
    drawn = torch.searchsorted(cumulative, target[:, None], right=True)[:, 0]
    return torch.where(greedy, logits.argmax(dim=-1), drawn)
