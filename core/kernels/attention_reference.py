"""The paged-attention oracle: plain torch, one sequence at a time, softmax in fp32.

Written to be obviously right rather than fast; the Triton kernels and the CPU fast path are
tested against it. The cache layout and batch description are documented in
`mistralrs.kernels.attention`; 8-bit caches (`kv_u8`) hold their rows quantized, which this
attends to dequantized.
"""
from __future__ import annotations

import torch

from mistralrs.kernels import kv_u8


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    block_size = k_cache.shape[1]
    for token, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        for rows, cache in ((k[token], k_cache), (v[token], v_cache)):
            if cache.dtype == kv_u8.DTYPE:
                kv_u8.store_rows(cache, slot // block_size, slot % block_size, rows)
            else:
                cache[slot // block_size, slot % block_size] = rows


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor,
                    block_tables: torch.Tensor, *, scale: float, sliding_window: int | None = None,
                    softcap: float | None = None, max_q_len: int | None = None) -> torch.Tensor:
    num_q_heads = q.shape[1]
    group = num_q_heads // k_cache.shape[2]
    out = q.new_empty(q.shape[0], num_q_heads, v_cache.shape[-1])
    cu = cu_seqlens_q.tolist()
    for seq, context_len in enumerate(context_lens.tolist()):
        rows = slice(cu[seq], cu[seq + 1])
        q_len = cu[seq + 1] - cu[seq]
        keys = _sequence_rows(k_cache, block_tables[seq], context_len)
        values = _sequence_rows(v_cache, block_tables[seq], context_len)
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[rows].float(), keys) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        query_pos = torch.arange(context_len - q_len, context_len, device=q.device)[:, None]
        key_pos = torch.arange(context_len, device=q.device)[None, :]
        allowed = key_pos <= query_pos
        if sliding_window is not None:
            allowed &= query_pos - key_pos < sliding_window
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        out[rows] = torch.einsum("hqk,khd->qhd", probs, values).to(q.dtype)
    return out


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           context_lens: torch.Tensor, block_tables: torch.Tensor, *, scale: float,
                           sliding_window: int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """Decode is prefill with one query row per sequence."""
    cu_seqlens_q = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return paged_attention(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables,
                           scale=scale, sliding_window=sliding_window, softcap=softcap, max_q_len=1)


def _sequence_rows(cache: torch.Tensor, block_table_row: torch.Tensor,
                   context_len: int) -> torch.Tensor:
    """The first `context_len` cache rows of one sequence, in position order: fp32 [ctx, H, D]."""
    block_size = cache.shape[1]
    num_blocks = -(-context_len // block_size)
    blocks = block_table_row[:num_blocks].long()
    rows = kv_u8.gather_blocks(cache, blocks) if cache.dtype == kv_u8.DTYPE else cache[blocks]
    return rows.flatten(0, 1)[:context_len].float()
