"""Paged-attention Triton kernels: KV store, flash prefill over block tables, split-K decode.

Keys and values are read straight from the cache through each sequence's block table, one key
tile at a time (any cache block size; a tile may straddle blocks). Both attention kernels fold
key tiles into an online softmax (`_attend_key_tile`); scores are kept in log2 units so the
kernels use `exp2`. The cache layout and batch description are documented in
`mistralrs.kernels.attention`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
_MAX_DECODE_SPLITS = 64


# --- store_kv ------------------------------------------------------------------------------------

@triton.jit
def _copy_heads(src, dst, src_stride_head, dst_stride_head, NUM_HEADS: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < NUM_HEADS) & (dims < HEAD_DIM)
    rows = tl.load(src + heads * src_stride_head + dims, mask=mask)
    tl.store(dst + heads * dst_stride_head + dims, rows, mask=mask)


@triton.jit
def _store_kv_kernel(k, v, k_cache, v_cache, slot_mapping,
                     stride_k_token, stride_k_head, stride_v_token, stride_v_head,
                     stride_kc_block, stride_kc_slot, stride_kc_head,
                     stride_vc_block, stride_vc_slot, stride_vc_head,
                     NUM_HEADS: tl.constexpr, HEAD_DIM_K: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_DK: tl.constexpr,
                     BLOCK_DV: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    k_row = k_cache + block * stride_kc_block + offset * stride_kc_slot
    v_row = v_cache + block * stride_vc_block + offset * stride_vc_slot
    _copy_heads(k + token * stride_k_token, k_row, stride_k_head, stride_kc_head,
                NUM_HEADS, HEAD_DIM_K, BLOCK_H, BLOCK_DK)
    _copy_heads(v + token * stride_v_token, v_row, stride_v_head, stride_vc_head,
                NUM_HEADS, HEAD_DIM_V, BLOCK_H, BLOCK_DV)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    num_heads, head_dim_k, head_dim_v = k.shape[1], k.shape[2], v.shape[2]
    _store_kv_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        NUM_HEADS=num_heads, HEAD_DIM_K=head_dim_k, HEAD_DIM_V=head_dim_v,
        BLOCK_SIZE=k_cache.shape[1], BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_DK=triton.next_power_of_2(head_dim_k), BLOCK_DV=triton.next_power_of_2(head_dim_v))


# --- shared attention pieces ---------------------------------------------------------------------

@triton.jit
def _tanh(x):
    """tanh from exp (libdevice's is not available to the interpreter); no overflow either side."""
    decay = tl.exp(-2.0 * tl.abs(x))
    magnitude = (1.0 - decay) / (1.0 + decay)
    return tl.where(x < 0, -magnitude, magnitude)


@triton.jit
def _attend_key_tile(acc, row_max, row_sum, q, query_pos, key_start, context_len, block_table_row,
                     k_head, v_head, stride_k_block, stride_k_slot, stride_v_block, stride_v_slot,
                     scale, softcap, window,
                     HEAD_DIM_K: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                     HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Fold keys key_start .. key_start + BLOCK_N - 1 into the online softmax of the query rows
    `q` [R, BLOCK_DK] at positions `query_pos` [R]: running max (log2 units), running sum and
    unnormalized output acc [R, BLOCK_DV]. `k_head`/`v_head` point at one kv head of the caches."""
    key_pos = key_start + tl.arange(0, BLOCK_N)
    in_context = key_pos < context_len
    block = tl.load(block_table_row + key_pos // BLOCK_SIZE, mask=in_context, other=0).to(tl.int64)
    key_row = block * stride_k_block + (key_pos % BLOCK_SIZE) * stride_k_slot
    value_row = block * stride_v_block + (key_pos % BLOCK_SIZE) * stride_v_slot

    dk = tl.arange(0, BLOCK_DK)
    keys = tl.load(k_head + key_row[:, None] + dk[None, :],
                   mask=in_context[:, None] & (dk[None, :] < HEAD_DIM_K), other=0.0)
    scores = tl.dot(q, tl.trans(keys), input_precision="ieee") * scale
    if HAS_SOFTCAP:
        scores = softcap * _tanh(scores / softcap)
    allowed = in_context[None, :] & (key_pos[None, :] <= query_pos[:, None])
    if HAS_WINDOW:
        allowed = allowed & (query_pos[:, None] - key_pos[None, :] < window)
    scores = tl.where(allowed, scores * _LOG2E, float("-inf"))

    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    # A row with no allowed key yet keeps max -inf: shift by 0 there instead of computing inf - inf.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    correction = tl.exp2(row_max - shift)
    probs = tl.exp2(scores - shift[:, None])

    dv = tl.arange(0, BLOCK_DV)
    values = tl.load(v_head + value_row[:, None] + dv[None, :],
                     mask=in_context[:, None] & (dv[None, :] < HEAD_DIM_V), other=0.0)
    acc = acc * correction[:, None] + tl.dot(probs.to(values.dtype), values, input_precision="ieee")
    return acc, new_max, row_sum * correction + tl.sum(probs, axis=1)


@triton.jit
def _attend_keys(q, query_pos, key_lo, key_hi, context_len, block_table_row, k_head, v_head,
                 stride_k_block, stride_k_slot, stride_v_block, stride_v_slot, scale, softcap,
                 window, ROWS: tl.constexpr, HEAD_DIM_K: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
                 BLOCK_DV: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """The online softmax of the ROWS query rows `q` over keys key_lo .. key_hi - 1, tile by
    tile (`_attend_key_tile`): unnormalized output [ROWS, BLOCK_DV], max and sum per row."""
    acc = tl.zeros([ROWS, BLOCK_DV], dtype=tl.float32)
    row_max = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([ROWS], dtype=tl.float32)
    for key_tile_start in range(key_lo, key_hi, BLOCK_N):
        acc, row_max, row_sum = _attend_key_tile(
            acc, row_max, row_sum, q, query_pos, key_tile_start, context_len, block_table_row,
            k_head, v_head, stride_k_block, stride_k_slot, stride_v_block, stride_v_slot, scale,
            softcap, window, HEAD_DIM_K, HEAD_DIM_V, BLOCK_SIZE, BLOCK_N, BLOCK_DK, BLOCK_DV,
            HAS_SOFTCAP, HAS_WINDOW)
    return acc, row_max, row_sum


def _tile_sizes(device: torch.device) -> tuple[int, int]:
    """(query rows, keys) per tile. Compiled: 64 x 64 feeds the tensor cores. Interpreted (CPU
    tensors, i.e. tests): 16 x 16, the smallest `tl.dot` accepts, so tiny shapes still cross
    several tiles."""
    return (64, 64) if device.type == "cuda" else (16, 16)


def _attention_constants(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         sliding_window: int | None, softcap: float | None) -> dict:
    """The compile-time constants both attention kernels share."""
    head_dim_k, head_dim_v = k_cache.shape[-1], v_cache.shape[-1]
    return dict(GROUP=q.shape[1] // k_cache.shape[2], HEAD_DIM_K=head_dim_k, HEAD_DIM_V=head_dim_v,
                BLOCK_SIZE=k_cache.shape[1], BLOCK_N=_tile_sizes(q.device)[1],
                BLOCK_DK=triton.next_power_of_2(head_dim_k),
                BLOCK_DV=triton.next_power_of_2(head_dim_v),
                HAS_SOFTCAP=softcap is not None, HAS_WINDOW=sliding_window is not None,
                num_warps=8 if max(head_dim_k, head_dim_v) > 128 else 4)


def _cache_strides(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, ...]:
    """Block, slot and head strides of both caches (the head dim is contiguous)."""
    return (*k_cache.stride()[:3], *v_cache.stride()[:3])


# --- prefill (any mix of prompt chunks and decode rows) ------------------------------------------

@triton.jit
def _paged_prefill_kernel(out, q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables,
                          stride_q_token, stride_q_head, stride_o_token, stride_o_head,
                          stride_k_block, stride_k_slot, stride_k_head,
                          stride_v_block, stride_v_slot, stride_v_head, stride_table_seq,
                          scale, softcap, window,
                          GROUP: tl.constexpr, HEAD_DIM_K: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                          BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                          HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """One program: BLOCK_M query rows of one sequence and one query head, over the key tiles
    from the first key any of its rows may see to its last row's position."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tile = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q + seq)
    q_len = tl.load(cu_seqlens_q + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    context_len = tl.load(context_lens + seq)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    query_pos = context_len - q_len + rows
    first_pos = context_len - q_len + tile * BLOCK_M
    key_end = tl.minimum(first_pos + BLOCK_M, context_len)
    key_start = 0
    if HAS_WINDOW:
        key_start = tl.maximum(first_pos - window + 1, 0)

    tokens = (q_start + rows).to(tl.int64)
    row_valid = rows < q_len
    dk = tl.arange(0, BLOCK_DK)
    queries = tl.load(q + tokens[:, None] * stride_q_token + head * stride_q_head + dk[None, :],
                      mask=row_valid[:, None] & (dk[None, :] < HEAD_DIM_K), other=0.0)
    kv_head = head // GROUP
    block_table_row = block_tables + seq.to(tl.int64) * stride_table_seq
    acc, row_max, row_sum = _attend_keys(
        queries, query_pos, key_start, key_end, context_len, block_table_row,
        k_cache + kv_head * stride_k_head, v_cache + kv_head * stride_v_head,
        stride_k_block, stride_k_slot, stride_v_block, stride_v_slot, scale, softcap, window,
        BLOCK_M, HEAD_DIM_K, HEAD_DIM_V, BLOCK_SIZE, BLOCK_N, BLOCK_DK, BLOCK_DV,
        HAS_SOFTCAP, HAS_WINDOW)

    row_sum = tl.where(row_valid, row_sum, 1.0)  # padding rows past q_len may have seen no key
    dv = tl.arange(0, BLOCK_DV)
    tl.store(out + tokens[:, None] * stride_o_token + head * stride_o_head + dv[None, :],
             acc / row_sum[:, None], mask=row_valid[:, None] & (dv[None, :] < HEAD_DIM_V))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor,
                    block_tables: torch.Tensor, *, scale: float, sliding_window: int | None = None,
                    softcap: float | None = None, max_q_len: int | None = None) -> torch.Tensor:
    num_tokens, num_q_heads, _ = q.shape
    out = q.new_empty(num_tokens, num_q_heads, v_cache.shape[-1])
    block_m = _tile_sizes(q.device)[0]
    # Without max_q_len, T bounds every sequence's rows; surplus programs return at once.
    query_tiles = triton.cdiv(num_tokens if max_q_len is None else max_q_len, block_m)
    grid = (context_lens.shape[0], num_q_heads, query_tiles)
    _paged_prefill_kernel[grid](
        out, q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(k_cache, v_cache), block_tables.stride(0),
        scale, softcap or 1.0, sliding_window or 0,
        BLOCK_M=block_m, **_attention_constants(q, k_cache, v_cache, sliding_window, softcap))
    return out


# --- split-K decode ------------------------------------------------------------------------------

@triton.jit
def _paged_decode_split_kernel(partial_acc, partial_max, partial_sum, q, k_cache, v_cache,
                               context_lens, block_tables, stride_q_seq, stride_q_head,
                               stride_k_block, stride_k_slot, stride_k_head,
                               stride_v_block, stride_v_slot, stride_v_head, stride_table_seq,
                               scale, softcap, window,
                               GROUP: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_G: tl.constexpr,
                               HEAD_DIM_K: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                               BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                               HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """One program: all GROUP query heads of one kv head of one sequence (the rows of one
    `tl.dot`, so each key tile is loaded once for the group), over one of NUM_SPLITS equal parts
    of the keys the sequence's last position sees. Writes that part's max, sum and
    unnormalized output per query head."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_q_heads = tl.num_programs(1) * GROUP
    context_len = tl.load(context_lens + seq)
    key_lo = 0
    if HAS_WINDOW:
        key_lo = tl.maximum(context_len - window, 0)
    split_len = tl.cdiv(tl.cdiv(context_len - key_lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    split_start = key_lo + split * split_len
    split_end = tl.minimum(split_start + split_len, context_len)

    member = tl.arange(0, BLOCK_G)
    is_member = member < GROUP
    heads = kv_head * GROUP + member
    dk = tl.arange(0, BLOCK_DK)
    q_rows = q + seq.to(tl.int64) * stride_q_seq + heads * stride_q_head
    queries = tl.load(q_rows[:, None] + dk[None, :],
                      mask=is_member[:, None] & (dk[None, :] < HEAD_DIM_K), other=0.0)
    query_pos = tl.zeros([BLOCK_G], dtype=tl.int32) + context_len - 1
    block_table_row = block_tables + seq.to(tl.int64) * stride_table_seq
    acc, row_max, row_sum = _attend_keys(
        queries, query_pos, split_start, split_end, context_len, block_table_row,
        k_cache + kv_head * stride_k_head, v_cache + kv_head * stride_v_head,
        stride_k_block, stride_k_slot, stride_v_block, stride_v_slot, scale, softcap, window,
        BLOCK_G, HEAD_DIM_K, HEAD_DIM_V, BLOCK_SIZE, BLOCK_N, BLOCK_DK, BLOCK_DV,
        HAS_SOFTCAP, HAS_WINDOW)

    part = (seq.to(tl.int64) * num_q_heads + heads) * NUM_SPLITS + split
    tl.store(partial_max + part, row_max, mask=is_member)
    tl.store(partial_sum + part, row_sum, mask=is_member)
    dv = tl.arange(0, BLOCK_DV)
    tl.store(partial_acc + part[:, None] * HEAD_DIM_V + dv[None, :], acc,
             mask=is_member[:, None] & (dv[None, :] < HEAD_DIM_V))


@triton.jit
def _combine_splits_kernel(out, partial_acc, partial_max, partial_sum, stride_o_seq, stride_o_head,
                           HEAD_DIM_V: tl.constexpr, NUM_SPLITS: tl.constexpr,
                           BLOCK_DV: tl.constexpr):
    """One program per (sequence, query head): rescale each part to the overall max and sum up.
    Empty parts carry max -inf and weigh nothing."""
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    first_part = (seq * tl.num_programs(1) + head) * NUM_SPLITS
    parts = first_part + tl.arange(0, NUM_SPLITS)
    maxes = tl.load(partial_max + parts)
    overall_max = tl.max(maxes, axis=0)
    total = tl.sum(tl.exp2(maxes - overall_max) * tl.load(partial_sum + parts), axis=0)
    dv = tl.arange(0, BLOCK_DV)
    dv_valid = dv < HEAD_DIM_V
    acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
    for part in range(first_part, first_part + NUM_SPLITS):
        weight = tl.exp2(tl.load(partial_max + part) - overall_max)
        acc += weight * tl.load(partial_acc + part * HEAD_DIM_V + dv, mask=dv_valid, other=0.0)
    tl.store(out + seq * stride_o_seq + head * stride_o_head + dv, acc / total, mask=dv_valid)


def decode_num_splits(q: torch.Tensor, k_cache: torch.Tensor, block_tables: torch.Tensor,
                      sliding_window: int | None) -> int:
    """Parts each context is split into: enough programs to fill the GPU twice over, no part
    shorter than one key tile, at most _MAX_DECODE_SPLITS; a power of two. The longest context
    is bounded by the block tables' capacity (and the window), so no sync reads the lengths."""
    max_keys = block_tables.shape[1] * k_cache.shape[1]
    if sliding_window is not None:
        max_keys = min(max_keys, sliding_window)
    if q.is_cuda:
        processors = torch.cuda.get_device_properties(q.device).multi_processor_count
    else:
        processors = 8  # the interpreter has none; a stand-in that makes small tests split
    splits = min(triton.cdiv(2 * processors, q.shape[0] * k_cache.shape[2]),
                 triton.cdiv(max_keys, _tile_sizes(q.device)[1]), _MAX_DECODE_SPLITS)
    return triton.next_power_of_2(max(splits, 1))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           context_lens: torch.Tensor, block_tables: torch.Tensor, *, scale: float,
                           sliding_window: int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    num_seqs, num_q_heads, _ = q.shape
    num_kv_heads, head_dim_v = k_cache.shape[2], v_cache.shape[-1]
    num_splits = decode_num_splits(q, k_cache, block_tables, sliding_window)
    partial_max = q.new_empty(num_seqs, num_q_heads, num_splits, dtype=torch.float32)
    partial_sum = torch.empty_like(partial_max)
    partial_acc = q.new_empty(num_seqs, num_q_heads, num_splits, head_dim_v, dtype=torch.float32)
    _paged_decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        partial_acc, partial_max, partial_sum, q, k_cache, v_cache, context_lens, block_tables,
        q.stride(0), q.stride(1), *_cache_strides(k_cache, v_cache), block_tables.stride(0),
        scale, softcap or 1.0, sliding_window or 0,
        NUM_SPLITS=num_splits, BLOCK_G=max(16, triton.next_power_of_2(num_q_heads // num_kv_heads)),
        **_attention_constants(q, k_cache, v_cache, sliding_window, softcap))
    out = q.new_empty(num_seqs, num_q_heads, head_dim_v)
    _combine_splits_kernel[(num_seqs, num_q_heads)](
        out, partial_acc, partial_max, partial_sum, out.stride(0), out.stride(1),
        HEAD_DIM_V=head_dim_v, NUM_SPLITS=num_splits, BLOCK_DV=triton.next_power_of_2(head_dim_v))
    return out
