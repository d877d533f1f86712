"""The small fused float32 ops of `ops.c`, each beside the torch code it stands for.

Every function takes the shapes the layers have at hand (views with strides are fine where the
last dimension is contiguous) and returns or writes float32. `usable(*tensors)` tells whether
the native path applies: CPU float32 tensors with a contiguous last dimension and the library
loaded; otherwise the layers run their torch code, which is also these kernels' test oracle.
"""
from __future__ import annotations

import torch

from mistralrs.kernels import kv_u8
from mistralrs.kernels.cpu import native
from mistralrs.kernels.cpu.quant_matmul import scratch_bytes, threads

ACTIVATIONS = {"silu": 0, "gelu_pytorch_tanh": 1, "gelu_new": 1, "gelu": 2}
"""Gated activations the native kernel computes (by the Hugging Face `hidden_act` names)."""


def usable(*tensors: torch.Tensor) -> bool:
    if native.library() is None:
        return False
    for t in tensors:
        if not t.is_cpu or t.dtype is not torch.float32 or t.stride(-1) != 1:
            return False
    return True


KV_FORMATS = {torch.float32: 0, torch.float16: 1, kv_u8.DTYPE: 2}
"""The cache dtypes the attention kernels read, by their `kv_format` number in `ops.c`."""


def usable_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """KV caches the attention kernels read: float32, float16 or `kv_u8`'s, on the CPU, rows
    contiguous."""
    if native.library() is None or k_cache.dtype != v_cache.dtype:
        return False
    if k_cache.dtype == kv_u8.DTYPE:
        return k_cache.is_cpu and kv_u8.is_cache(k_cache) and kv_u8.is_cache(v_cache)
    return all(c.is_cpu and c.dtype in KV_FORMATS and c.stride(-1) == 1 for c in (k_cache, v_cache))


def _row_layout(x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """x [..., D] as rows for the kernels: (rows, outer stride, inner stride, inner count), the
    leading dimensions read as [outer, inner] (a [T, H, D] view of a wider buffer is fine);
    None where they cannot be read so."""
    if x.dim() == 1:
        return 1, x.shape[0], 0, 1
    inner, inner_stride = x.shape[-2], x.stride(-2)
    outer_shape, outer_strides = x.shape[:-2], x.stride()[:-2]
    outer_stride = outer_strides[-1] if outer_shape else inner * inner_stride
    for dim in range(len(outer_shape) - 1):
        if outer_strides[dim] != outer_strides[dim + 1] * outer_shape[dim + 1]:
            return None
    return x.numel() // x.shape[-1], outer_stride, inner_stride, inner


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool = False,
             add_to: torch.Tensor | None = None) -> torch.Tensor | None:
    """x / rms(x) * (weight or 1 + weight) over the last dim: a new contiguous tensor, or with
    `add_to` (contiguous, x's shape) added into it and it returned. None (nothing done) where
    x's rows cannot be read."""
    layout = _row_layout(x)
    if layout is None or x.numel() == 0:
        return None
    rows, outer, inner_stride, inner = layout
    out = torch.empty(x.shape) if add_to is None else add_to
    native.call(native.library().mrs_rms_norm, x.data_ptr(), outer, inner_stride, inner,
                weight.data_ptr(), int(unit_offset), out.data_ptr(), int(add_to is not None),
                rows, x.shape[-1], eps, threads())
    return out


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, F] of positions (int64 [T]) times inv_freq (float32 [F]), times scale."""
    tokens, half = positions.shape[0], inv_freq.shape[0]
    cos, sin = torch.empty(tokens, half), torch.empty(tokens, half)
    native.call(native.library().mrs_rope_cos_sin, positions.data_ptr(), tokens,
                inv_freq.data_ptr(), half, scale, cos.data_ptr(), sin.data_ptr())
    return cos, sin


def rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            rotary_dim: int) -> None:
    """Rotate-half rotary embedding of q [T, Hq, D] and k [T, Hk, D] in place: the first
    rotary_dim features of each head, with cos, sin [T, rotary_dim / 2] (contiguous)."""
    native.call(native.library().mrs_rotary, q.data_ptr(), q.stride(0), q.stride(1), q.shape[1],
                k.data_ptr(), k.stride(0), k.stride(1), k.shape[1], q.shape[0], rotary_dim,
                cos.data_ptr(), sin.data_ptr())


def gated_activation(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """act(gate) * up for gate, up [T, I] sharing a row stride -> new [T, I]."""
    out = torch.empty(gate.shape)
    native.call(native.library().mrs_gated_activation, gate.data_ptr(), up.data_ptr(),
                gate.stride(0), gate.shape[0], gate.shape[1], ACTIVATIONS[act], out.data_ptr(),
                threads())
    return out


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """`attention.store_kv` for float32 k, v and `usable_cache` caches (int64 slots)."""
    native.call(native.library().mrs_store_kv, k.data_ptr(), k.stride(0), k.stride(1),
                v.data_ptr(), v.stride(0), v.stride(1), k_cache.data_ptr(),
                *k_cache.stride()[:3], v_cache.data_ptr(), *v_cache.stride()[:3],
                KV_FORMATS[k_cache.dtype], slot_mapping.data_ptr(), k.shape[0],
                k.shape[1], k.shape[2], v.shape[2], k_cache.shape[1])


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           context_lens: torch.Tensor, block_tables: torch.Tensor, *, scale: float,
                           sliding_window: int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """`attention.paged_decode_attention` for float32 q and `usable_cache` caches:
    q [B, Hq, Dk] -> float32 [B, Hq, Dv] (contiguous context_lens and block_tables)."""
    batch, q_heads, dk = q.shape
    dv = v_cache.shape[3]
    lib = native.library()
    out = torch.empty(batch, q_heads, dv)
    partial = scratch_bytes(4 * lib.mrs_decode_attention_scratch(batch, q_heads, k_cache.shape[2],
                                                                 dv, threads()))
    native.call(lib.mrs_paged_decode_attention, q.data_ptr(), q.stride(0), q.stride(1),
                k_cache.data_ptr(), *k_cache.stride()[:3], v_cache.data_ptr(),
                *v_cache.stride()[:3], KV_FORMATS[k_cache.dtype],
                context_lens.data_ptr(), block_tables.data_ptr(),
                block_tables.stride(0), batch, q_heads, k_cache.shape[2], dk, dv,
                k_cache.shape[1], scale, sliding_window or 0, softcap or 0.0, out.data_ptr(),
                partial.data_ptr(), threads())
    return out


def argmax_rows(logits: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Per row of float32 logits [B, V]: the first index of the largest value, and whether the
    row holds a NaN (one pass, on the kernels' threads: a parallel torch reduction here would
    leave torch's OpenMP workers spinning into the next step's kernels)."""
    rows = logits.shape[0]
    argmax, nan = torch.empty(rows, dtype=torch.int64), torch.empty(rows, dtype=torch.int8)
    native.library().mrs_argmax_rows(logits.data_ptr(), rows, logits.shape[1], logits.stride(0),
                                     argmax.data_ptr(), nan.data_ptr(), threads())
    return argmax.tolist(), [bool(v) for v in nan.tolist()]
