"""The fast torch path for paged attention, used on CPU.

Decode batches the sequences: a few batched gathers of the cache blocks they need, each
followed by one attention call; prefill loops over sequences (and over chunks of long prompts,
bounding the score matrix). The query heads that share a kv head are laid out as extra query
rows of that kv head ("grouped rows"), so GQA never copies keys or values per query head.
Everything is computed in fp32 whatever the cache dtype (8-bit caches, `kv_u8`, dequantized).
With float32, float16 or 8-bit caches, storing and attention run as one native call each
(`mistralrs.kernels.cpu.ops`): decode as above, prefill as one decode per query row
(`_rows_as_decodes`); the torch code here then serves other caches (bfloat16) and the reference
mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs.kernels import kv_u8
from mistralrs.kernels.cpu import ops as cpu_ops

QUERY_CHUNK = 128
"""Prompt rows attended in one call: bounds the [rows, keys] score and mask matrices."""
GATHER_CHUNK_BYTES = 4 << 20
"""Decode gathers the K and V of this many bytes' worth of sequences at a time: the copies stay
in the CPU caches for the attention that reads them, and in memory malloc reuses (a fresh
multi-megabyte buffer is mmap'd and costs a page fault per 4 KiB, more than the copy itself)."""


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    if cpu_ops.usable(k, v) and cpu_ops.usable_cache(k_cache, v_cache):
        cpu_ops.store_kv(k, v, k_cache, v_cache, slot_mapping.to(torch.int64).contiguous())
        return
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    for rows, cache in ((k[keep], k_cache), (v[keep], v_cache)):
        if cache.dtype == kv_u8.DTYPE:
            kv_u8.store_rows(cache, blocks, offsets, rows)
        else:
            cache[blocks, offsets] = rows.to(cache.dtype)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor,
                    block_tables: torch.Tensor, *, scale: float, sliding_window: int | None = None,
                    softcap: float | None = None, max_q_len: int | None = None) -> torch.Tensor:
    q_lens = cu_seqlens_q.diff()
    if cpu_ops.usable(q) and cpu_ops.usable_cache(k_cache, v_cache):
        return _rows_as_decodes(q, k_cache, v_cache, cu_seqlens_q, q_lens, context_lens,
                                block_tables, scale=scale, sliding_window=sliding_window,
                                softcap=softcap)
    out = q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
    decoding = (q_lens == 1).nonzero().flatten()
    if len(decoding):
        rows = cu_seqlens_q[decoding].long()
        out[rows] = paged_decode_attention(
            q[rows], k_cache, v_cache, context_lens[decoding], block_tables[decoding],
            scale=scale, sliding_window=sliding_window, softcap=softcap)
    cu = cu_seqlens_q.tolist()
    context = context_lens.tolist()
    for seq in (q_lens > 1).nonzero().flatten().tolist():
        first_query_pos = context[seq] - (cu[seq + 1] - cu[seq])
        for start in range(cu[seq], cu[seq + 1], QUERY_CHUNK):
            rows = slice(start, min(start + QUERY_CHUNK, cu[seq + 1]))
            out[rows] = _prefill_rows(q[rows], first_query_pos + start - cu[seq], k_cache, v_cache,
                                      block_tables[seq], scale, sliding_window, softcap)
    return out


def _rows_as_decodes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, q_lens: torch.Tensor, context_lens: torch.Tensor,
                     block_tables: torch.Tensor, **options) -> torch.Tensor:
    """Every query row as the decode of its own position, in one native call: row t of sequence
    s attends to the first context_s - (cu_s+1 - t) + 1 positions of s's blocks. The kernel
    reads the float16 cache in place (no float32 copies of the keys and values) and keeps
    prefill off torch's attention code, whose pages (~7 MiB) would otherwise join the
    resident memory."""
    row_seq = torch.repeat_interleave(torch.arange(len(q_lens)), q_lens)
    row_context = (context_lens.long()[row_seq] - cu_seqlens_q.long()[row_seq + 1]
                   + torch.arange(1, q.shape[0] + 1))
    return cpu_ops.paged_decode_attention(
        q, k_cache, v_cache, row_context.to(torch.int32),
        block_tables.index_select(0, row_seq).to(torch.int32), **options)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           context_lens: torch.Tensor, block_tables: torch.Tensor, *, scale: float,
                           sliding_window: int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """All sequences at once: each gathers the same number of blocks (enough for the longest
    needed key range, starting at its own first needed block) and masks what it does not use."""
    if cpu_ops.usable(q) and cpu_ops.usable_cache(k_cache, v_cache):
        return cpu_ops.paged_decode_attention(q, k_cache, v_cache, context_lens.contiguous(),
                                              block_tables.contiguous(), scale=scale,
                                              sliding_window=sliding_window, softcap=softcap)
    batch, num_q_heads, head_dim_k = q.shape
    block_size, num_kv_heads, head_dim_v = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    group = num_q_heads // num_kv_heads
    context = context_lens.long()
    first_key = torch.zeros_like(context)
    if sliding_window is not None:
        first_key = (context - sliding_window).clamp(min=0)
    first_block = first_key // block_size
    last_block = (context - 1) // block_size
    num_blocks = int((last_block - first_block).max()) + 1 if batch else 0
    table_column = first_block[:, None] + torch.arange(num_blocks)
    needed = table_column <= last_block[:, None]
    table_entry = block_tables.gather(1, table_column.clamp(max=block_tables.shape[1] - 1))
    block_ids = torch.where(needed, table_entry.long(), 0)  # entries past a table's end: any block
    key_pos = (table_column[:, :, None] * block_size + torch.arange(block_size)).flatten(1)
    allowed = (key_pos >= first_key[:, None]) & (key_pos < context[:, None])

    grouped_q = q.float().reshape(batch, num_kv_heads, group, head_dim_k)
    out = torch.empty(batch, num_kv_heads, group, head_dim_v)
    seq_bytes = key_pos.shape[1] * num_kv_heads * (head_dim_k + head_dim_v) * 4
    seqs_per_chunk = max(1, GATHER_CHUNK_BYTES // seq_bytes)
    for start in range(0, batch, seqs_per_chunk):
        seqs = slice(start, start + seqs_per_chunk)
        out[seqs] = _attend(grouped_q[seqs], _gather_blocks(k_cache, block_ids[seqs]),
                            _gather_blocks(v_cache, block_ids[seqs]), allowed[seqs, None, None, :],
                            scale, softcap)
    return out.reshape(batch, num_q_heads, -1).to(q.dtype)


def _prefill_rows(q: torch.Tensor, first_query_pos: int, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, block_table_row: torch.Tensor, scale: float,
                  sliding_window: int | None, softcap: float | None) -> torch.Tensor:
    """Consecutive query rows [R, Hq, Dk] of one sequence, the first at `first_query_pos`."""
    rows, num_q_heads, head_dim_k = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    last_query_pos = first_query_pos + rows - 1
    first_key = 0 if sliding_window is None else max(0, first_query_pos - sliding_window + 1)
    first_block, last_block = first_key // block_size, last_query_pos // block_size
    block_ids = block_table_row[first_block:last_block + 1].long()
    key_pos = torch.arange(first_block * block_size, (last_block + 1) * block_size)
    query_pos = torch.arange(first_query_pos, last_query_pos + 1)[:, None]
    allowed = key_pos <= query_pos
    if sliding_window is not None:
        allowed &= query_pos - key_pos < sliding_window

    # [R, Hq, Dk] -> [Hkv, group * R, Dk]: row g * R + r is query head (kv_head * group + g), row r
    grouped_q = q.float().reshape(rows, num_kv_heads, group, head_dim_k).permute(1, 2, 0, 3)
    out = _attend(grouped_q.reshape(num_kv_heads, group * rows, head_dim_k),
                  _gather_blocks(k_cache, block_ids), _gather_blocks(v_cache, block_ids),
                  allowed.repeat(group, 1), scale, softcap)
    out = out.view(num_kv_heads, group, rows, -1).permute(2, 0, 1, 3)
    return out.reshape(rows, num_q_heads, -1).to(q.dtype)


def _gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Block ids [..., n] -> the blocks' rows as fp32 [..., H, n * block_size, D]."""
    _, block_size, num_heads, head_dim = cache.shape
    if cache.dtype == kv_u8.DTYPE:
        rows = kv_u8.gather_blocks(cache, block_ids)
    else:
        rows = cache.index_select(0, block_ids.flatten())
    rows = rows.view(*block_ids.shape[:-1], block_ids.shape[-1] * block_size, num_heads, head_dim)
    return rows.transpose(-3, -2).float()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float,
            softcap: float | None) -> torch.Tensor:
    """q [..., R, Dk], k [..., L, Dk], v [..., L, Dv]; boolean `allowed` broadcasts to
    [..., R, L]. Returns [..., R, Dv]."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    scores = softcap * torch.tanh((q @ k.mT) * (scale / softcap))
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v
