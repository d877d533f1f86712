"""Triton sampling kernels: penalties over the whole batch, then one program per row that draws.

The draw never sorts. Top-k and top-p both keep the scaled logits at or above a threshold, and
each threshold is found exactly by bisection over the float32 values seen as order-preserving
integers: at most 32 halvings, each one tiled pass counting (top-k) or summing (top-p) what lies
at or above the candidate. The token is then picked by inverse CDF in vocabulary order with a
tiled prefix sum, the same pick the torch reference makes with `cumsum`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sampling_tensors import SamplingTensors, uniform_for_rows

_PENALTY_TILE = 1024
_SCATTER_TILE = 256
_SAMPLE_TILE = 4096


@triton.jit
def _scatter_add_rows_kernel(ids_ptr, values_ptr, dest_ptr, n_ids, vocab,
                             HAS_VALUES: tl.constexpr, BLOCK: tl.constexpr):
    """dest[row, ids[row, i]] += values[row, i] (1 without values), skipping ids outside [0, vocab)."""
    row = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = offsets < n_ids
    ids = tl.load(ids_ptr + row * n_ids + offsets, mask=in_row, other=-1)
    valid = in_row & (ids >= 0) & (ids < vocab)
    if HAS_VALUES:
        values = tl.load(values_ptr + row * n_ids + offsets, mask=valid, other=0.0)
    else:
        values = tl.full([BLOCK], 1, tl.int32)
    tl.atomic_add(dest_ptr + row.to(tl.int64) * vocab + ids, values, mask=valid)


def _scatter_add_rows(ids: torch.Tensor, values: torch.Tensor | None, dest: torch.Tensor) -> None:
    rows, n_ids = ids.shape
    if rows * n_ids == 0:
        return
    block = min(_SCATTER_TILE, triton.next_power_of_2(n_ids))
    _scatter_add_rows_kernel[(rows, triton.cdiv(n_ids, block))](
        ids.contiguous(), None if values is None else values.contiguous(), dest, n_ids,
        dest.shape[1], HAS_VALUES=values is not None, BLOCK=block)


def _token_counts(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """int64 [B, L] token ids, -1 padded -> int32 [B, vocab]: how often each id occurs per row."""
    counts = torch.zeros(tokens.shape[0], vocab, dtype=torch.int32, device=tokens.device)
    _scatter_add_rows(tokens, None, counts)
    return counts


@triton.jit
def _penalize_kernel(logits_ptr, out_ptr, output_counts_ptr, window_counts_ptr,
                     repetition_ptr, frequency_ptr, presence_ptr, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < vocab
    at = row.to(tl.int64) * vocab + offsets
    logits = tl.load(logits_ptr + at, mask=mask)

    repetition = tl.load(repetition_ptr + row)
    repeated = tl.where(logits > 0, tl.math.div_rn(logits, repetition), logits * repetition)
    in_window = tl.load(window_counts_ptr + at, mask=mask, other=0) > 0
    logits = tl.where(in_window, repeated, logits)

    counts = tl.load(output_counts_ptr + at, mask=mask, other=0)
    penalty = (tl.load(frequency_ptr + row) * counts.to(tl.float32)
               + tl.load(presence_ptr + row) * (counts > 0).to(tl.float32))
    tl.store(out_ptr + at, logits - penalty, mask=mask)


def apply_penalties_triton(logits: torch.Tensor, tensors: SamplingTensors,
                           output_tokens: torch.Tensor, window_tokens: torch.Tensor) -> torch.Tensor:
    logits = logits.contiguous()
    rows, vocab = logits.shape
    out = torch.empty_like(logits)
    if out.numel() == 0:
        return out
    _penalize_kernel[(rows, triton.cdiv(vocab, _PENALTY_TILE))](
        logits, out, _token_counts(output_tokens, vocab), _token_counts(window_tokens, vocab),
        tensors.repetition_penalty, tensors.frequency_penalty, tensors.presence_penalty, vocab,
        BLOCK=_PENALTY_TILE, enable_fp_fusion=False)
    _scatter_add_rows(tensors.bias_ids, tensors.bias_values, out)
    return out


@triton.jit
def _order_preserving_bits(bits):
    """float32 bit patterns (as int32) <-> int32 whose signed order is the order of the floats.

    Negative floats grow as their bits shrink, so their 31 low bits are flipped; the map is its
    own inverse.
    """
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _key(value):
    """float32 -> int64 key, ordered as the floats are."""
    return _order_preserving_bits(value.to(tl.int32, bitcast=True)).to(tl.int64)


@triton.jit
def _value(key):
    """int64 key -> the float32 it stands for."""
    return _order_preserving_bits(key.to(tl.int32)).to(tl.float32, bitcast=True)


@triton.jit
def _scaled_tile(row_ptr, start, vocab, temperature, BLOCK: tl.constexpr):
    """Offsets, in-vocabulary mask and temperature-scaled logits (-inf outside) of one tile."""
    offsets = start + tl.arange(0, BLOCK)
    mask = offsets < vocab
    logits = tl.load(row_ptr + offsets, mask=mask, other=float("-inf"))
    return offsets, mask, tl.math.div_rn(logits, temperature)


@triton.jit
def _row_extremes(row_ptr, vocab, BLOCK: tl.constexpr):
    """The largest raw logit with its first index, and the smallest raw logit."""
    best = float("-inf")
    best_index = 0
    lowest = float("inf")
    for start in range(0, vocab, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < vocab
        logits = tl.load(row_ptr + offsets, mask=mask, other=float("-inf"))
        tile_best, tile_index = tl.max(logits, axis=0, return_indices=True,
                                       return_indices_tie_break_left=True)
        best_index = tl.where(tile_best > best, start + tile_index, best_index)
        best = tl.maximum(best, tile_best)
        lowest = tl.minimum(lowest, tl.min(tl.where(mask, logits, float("inf")), axis=0))
    return best, best_index, lowest


@triton.jit
def _count_and_mass(row_ptr, vocab, temperature, scaled_max, count_from, mass_from,
                    BLOCK: tl.constexpr):
    """How many scaled logits are >= count_from, and the weight of those >= mass_from.

    A token's weight is exp(scaled - scaled_max), its probability over the largest probability.
    """
    count = 0
    mass = 0.0
    for start in range(0, vocab, BLOCK):
        offsets, mask, scaled = _scaled_tile(row_ptr, start, vocab, temperature, BLOCK)
        count += tl.sum((mask & (scaled >= count_from)).to(tl.int32), axis=0)
        mass += tl.sum(tl.where(mask & (scaled >= mass_from), tl.exp(scaled - scaled_max), 0.0), axis=0)
    return count, mass


@triton.jit
def _upper_middle(lo, hi):
    return lo + ((hi - lo + 1) >> 1)


@triton.jit
def _halve(lo, hi, middle, passes):
    """One bisection step towards the largest key in [lo, hi] that passes (lo always passes)."""
    active = lo < hi
    return tl.where(active & passes, middle, lo), tl.where(active & (passes == 0), middle - 1, hi)


@triton.jit
def _filter_threshold(row_ptr, vocab, temperature, scaled_min, scaled_max, top_k, top_p,
                      BLOCK: tl.constexpr):
    """The smallest scaled logit passing top-k and top-p (the row's minimum when both are off).

    Each threshold is the largest key at or above which the count (top-k) or the mass (top-p)
    still reaches its target; both bisections share their passes over the row.
    """
    lowest = _key(scaled_min)
    k_lo = lowest
    k_hi = tl.where((top_k > 0) & (top_k < vocab), _key(scaled_max), lowest)
    p_lo = lowest
    p_hi = tl.where(top_p < 1.0, _key(scaled_max), lowest)
    p_target = 0.0
    if p_lo < p_hi:  # only top-p needs the mass of the whole row
        _, total = _count_and_mass(row_ptr, vocab, temperature, scaled_max, scaled_max,
                                   float("-inf"), BLOCK)
        p_target = top_p * total
    while (k_lo < k_hi) | (p_lo < p_hi):
        k_middle = _upper_middle(k_lo, k_hi)
        p_middle = _upper_middle(p_lo, p_hi)
        count, mass = _count_and_mass(row_ptr, vocab, temperature, scaled_max,
                                      _value(k_middle), _value(p_middle), BLOCK)
        k_lo, k_hi = _halve(k_lo, k_hi, k_middle, count >= top_k)
        p_lo, p_hi = _halve(p_lo, p_hi, p_middle, mass >= p_target)
    return tl.maximum(_value(k_lo), _value(p_lo))


@triton.jit
def _kept_weights(scaled, mask, scaled_max, threshold, min_p):
    """Weights of the tokens passing every filter, 0 elsewhere (min-p: weight >= min_p)."""
    weights = tl.exp(scaled - scaled_max)
    return tl.where(mask & (scaled >= threshold) & (weights >= min_p), weights, 0.0)


@triton.jit
def _draw(row_ptr, vocab, temperature, best, lowest, top_k, top_p, min_p, uniform,
          BLOCK: tl.constexpr):
    """The first token, in vocabulary order, whose cumulative kept weight exceeds uniform * total."""
    # Correctly rounded division is monotone, so these are the extremes of the scaled row.
    scaled_max = tl.math.div_rn(best, temperature)
    scaled_min = tl.math.div_rn(lowest, temperature)
    threshold = _filter_threshold(row_ptr, vocab, temperature, scaled_min, scaled_max, top_k, top_p,
                                  BLOCK)
    kept_total = 0.0
    last_kept = 0
    for start in range(0, vocab, BLOCK):
        offsets, mask, scaled = _scaled_tile(row_ptr, start, vocab, temperature, BLOCK)
        weights = _kept_weights(scaled, mask, scaled_max, threshold, min_p)
        kept_total += tl.sum(weights, axis=0)
        last_kept = tl.maximum(last_kept, tl.max(tl.where(weights > 0, offsets, 0), axis=0))

    target = uniform * kept_total
    cumulative = 0.0
    drawn = vocab
    start = 0
    while (start < vocab) & (drawn == vocab):
        offsets, mask, scaled = _scaled_tile(row_ptr, start, vocab, temperature, BLOCK)
        weights = _kept_weights(scaled, mask, scaled_max, threshold, min_p)
        crossed = mask & (cumulative + tl.cumsum(weights, axis=0) > target)
        drawn = tl.min(tl.where(crossed, offsets, vocab), axis=0)
        cumulative += tl.sum(weights, axis=0)
        start += BLOCK
    # Summing in another order can leave the last crossing a rounding short of the total.
    return tl.where(drawn < vocab, drawn, last_kept)


@triton.jit
def _sample_kernel(logits_ptr, out_ptr, vocab, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr,
                   uniform_ptr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * vocab
    best, token, lowest = _row_extremes(row_ptr, vocab, BLOCK)
    temperature = tl.load(temperature_ptr + row)
    if temperature > 0:
        token = _draw(row_ptr, vocab, temperature, best, lowest, tl.load(top_k_ptr + row),
                      tl.load(top_p_ptr + row), tl.load(min_p_ptr + row), tl.load(uniform_ptr + row),
                      BLOCK)
    tl.store(out_ptr + row, token.to(tl.int64))


def sample_triton(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    logits = logits.contiguous()
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    block = min(_SAMPLE_TILE, triton.next_power_of_2(vocab))
    _sample_kernel[(rows,)](
        logits, out, vocab, tensors.temperature, tensors.top_k, tensors.top_p, tensors.min_p,
        uniform_for_rows(tensors.seed, tensors.step), BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return out
