"""Attention over the paged KV cache: the public entry points, dispatching by device.

The cache (one pair per layer; the scheduler allocates blocks, these functions read and write):
    k_cache [num_blocks, block_size, num_kv_heads, head_dim_k]
    v_cache [num_blocks, block_size, num_kv_heads, head_dim_v]   (head_dim_v may differ)
(uint8 for the 8-bit cache, whose memory layout and scales `kv_u8` describes; CPU only.)
A token's slot is `block_index * block_size + offset`. Slots never written must still hold
finite numbers (allocate the caches with `torch.zeros`): the CPU path gathers whole blocks and
gives the unused slots zero weight, and 0 * nan is nan.

A ragged batch of B sequences:
    cu_seqlens_q  int32 [B+1]  sequence b's query rows are q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]
    context_lens  int32 [B]    KV positions of sequence b, including the new tokens (whose keys
                               and values are already stored)
    block_tables  int32 [B, max_blocks]  each sequence's blocks in order; entries past the ones
                               needed are ignored (-1 or anything)
The queries of a sequence are the last positions of its context: row i of sequence b sits at
position context_lens[b] - q_len_b + i and sees key positions j <= p (and p - j < sliding_window
when set). One description covers prompts, prefill chunks after cached blocks, and decode rows.

Implementations with these same signatures: `attention_triton` (CUDA), `attention_cpu` (the fast
torch path, everywhere else) and `attention_reference` (the oracle of the tests).
"""
from __future__ import annotations

import torch

from mistralrs.kernels import attention_cpu, attention_triton


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write token t's k [T, Hkv, Dk] and v [T, Hkv, Dv] into cache slot slot_mapping[t]; tokens
    with a negative slot are skipped."""
    _check_caches(k_cache, v_cache)
    assert k.dim() == 3 and v.dim() == 3, (
        f"k, v must be [T, Hkv, D]; got {tuple(k.shape)}, {tuple(v.shape)}")
    assert k.shape[1:] == k_cache.shape[2:] and v.shape[1:] == v_cache.shape[2:], (
        f"k {tuple(k.shape)} / v {tuple(v.shape)} rows do not fit the caches' "
        f"{tuple(k_cache.shape[2:])} / {tuple(v_cache.shape[2:])}")
    assert slot_mapping.shape == (k.shape[0],) and v.shape[0] == k.shape[0], (
        f"slot_mapping {tuple(slot_mapping.shape)} and v must have k's T={k.shape[0]} rows")
    assert slot_mapping.dtype in (torch.int32, torch.int64), (
        f"slot_mapping must be int32 or int64; got {slot_mapping.dtype}")
    _check_last_dim_contiguous(k=k, v=v)
    implementation(k).store_kv(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor,
                    block_tables: torch.Tensor, *, scale: float, sliding_window: int | None = None,
                    softcap: float | None = None, max_q_len: int | None = None) -> torch.Tensor:
    """Causal attention of the query rows q [T, Hq, Dk] of a ragged batch -> [T, Hq, Dv].

    Scores are (q . k) * scale, soft-capped to softcap * tanh(score / softcap) when `softcap` is
    set; query head h reads kv head h // (Hq // Hkv). `max_q_len`, when given, must be at least
    the longest q_len: it sizes the GPU launch without reading cu_seqlens_q back from the device
    (without it, T bounds every q_len)."""
    _check_attention_inputs(q, k_cache, v_cache, context_lens, block_tables, sliding_window,
                            softcap)
    batch = context_lens.shape[0]
    assert cu_seqlens_q.shape == (batch + 1,) and cu_seqlens_q.dtype == torch.int32, (
        f"cu_seqlens_q must be int32 [B+1={batch + 1}]; "
        f"got {cu_seqlens_q.dtype} {tuple(cu_seqlens_q.shape)}")
    return implementation(q).paged_attention(
        q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale=scale,
        sliding_window=sliding_window, softcap=softcap, max_q_len=max_q_len)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           context_lens: torch.Tensor, block_tables: torch.Tensor, *, scale: float,
                           sliding_window: int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """`paged_attention` for one query row per sequence, q [B, Hq, Dk] -> [B, Hq, Dv]; on the GPU
    long contexts are split into parts attended in parallel."""
    _check_attention_inputs(q, k_cache, v_cache, context_lens, block_tables, sliding_window,
                            softcap)
    assert q.shape[0] == context_lens.shape[0], (
        f"decode takes one query row per sequence: {q.shape[0]} rows, "
        f"{context_lens.shape[0]} sequences")
    return implementation(q).paged_decode_attention(
        q, k_cache, v_cache, context_lens, block_tables, scale=scale,
        sliding_window=sliding_window, softcap=softcap)


def implementation(tensor: torch.Tensor):
    """The module with the kernels for `tensor`'s device (same signatures as the functions
    here, without their input checks: for the layers, which build the inputs themselves and
    call the kernels every step of every layer)."""
    return attention_triton if tensor.is_cuda else attention_cpu


def _check_caches(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    assert k_cache.dim() == 4 and v_cache.dim() == 4, (
        "caches must be [num_blocks, block_size, num_kv_heads, head_dim]; "
        f"got {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    assert k_cache.shape[:3] == v_cache.shape[:3], (
        f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
        "disagree on blocks, block size or heads")
    assert k_cache.device == v_cache.device, "k_cache and v_cache must be on one device"
    _check_last_dim_contiguous(k_cache=k_cache, v_cache=v_cache)


def _check_attention_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            context_lens: torch.Tensor, block_tables: torch.Tensor,
                            sliding_window: int | None, softcap: float | None) -> None:
    _check_caches(k_cache, v_cache)
    num_kv_heads, head_dim_k = k_cache.shape[2], k_cache.shape[3]
    assert q.dim() == 3, f"q must be [tokens, Hq, Dk]; got {tuple(q.shape)}"
    assert q.shape[2] == head_dim_k, f"q head dim {q.shape[2]} != k_cache head dim {head_dim_k}"
    assert q.shape[1] % num_kv_heads == 0, (
        f"{q.shape[1]} query heads cannot share {num_kv_heads} kv heads evenly")
    assert q.dtype == k_cache.dtype == v_cache.dtype, (
        f"q, k_cache, v_cache must share a dtype; got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    assert q.device == k_cache.device, f"q is on {q.device} but the cache on {k_cache.device}"
    batch = context_lens.shape[0]
    assert context_lens.dim() == 1 and context_lens.dtype == torch.int32, (
        f"context_lens must be int32 [B]; got {context_lens.dtype} {tuple(context_lens.shape)}")
    assert block_tables.dim() == 2 and block_tables.shape[0] == batch, (
        f"block_tables must be [B={batch}, max_blocks]; got {tuple(block_tables.shape)}")
    assert block_tables.dtype == torch.int32, (
        f"block_tables must be int32; got {block_tables.dtype}")
    assert sliding_window is None or sliding_window > 0, (
        f"sliding_window must be positive; got {sliding_window}")
    assert softcap is None or softcap > 0, f"softcap must be positive; got {softcap}"
    _check_last_dim_contiguous(q=q, block_tables=block_tables)


def _check_last_dim_contiguous(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        assert tensor.stride(-1) == 1, (
            f"{name} must be contiguous in its last dim; strides {tensor.stride()}")
