"""Fused dequantize-matmul for packed GGUF weights: `out = x @ W.T`, with W decoded in registers
tile by tile and never written to memory.

Both kernels read W through `_weight_tile`, which decodes a `[BLOCK_N, BLOCK_K]` tile with the
type's decoder from `triton_decode` (the same code the dequantize kernel runs):
- decode (M <= GEMV_MAX_ROWS): a program owns BLOCK_N output features for all M rows of x, so W
  is streamed once; too few rows for tensor cores, it reduces with a broadcast multiply and sum.
- prefill: a tiled GEMM, `tl.dot` of an x tile with the decoded W tile, accumulating in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from .triton_decode import DECODERS

GEMV_MAX_ROWS = 8
# The float types gain nothing from a fused kernel: they dequantize by a view and a cast.
FUSED_TYPES = frozenset(qtype for qtype in DECODERS if GGML_QUANT_SIZES[qtype][0] > 1)

_GEMV_BLOCK_N = 16
_GEMV_TILE_ELEMENTS = 8192  # BLOCK_M * BLOCK_N * BLOCK_K of the broadcast product, in registers
_GEMM_BLOCK_M, _GEMM_BLOCK_N, _GEMM_BLOCK_K = 64, 64, 64


@triton.jit
def _weight_tile(w_ptr, row_bytes, n, k, N, K, DECODE: tl.constexpr,
                 BLOCK_ELEMENTS: tl.constexpr, BLOCK_BYTES: tl.constexpr):
    """W[n, k] as float32 [len(n), len(k)] (zero outside N x K), from rows of packed blocks."""
    block = w_ptr + n[:, None].to(tl.int64) * row_bytes + (k // BLOCK_ELEMENTS * BLOCK_BYTES)[None, :]
    mask = (n < N)[:, None] & (k < K)[None, :]
    return DECODE(block, (k % BLOCK_ELEMENTS)[None, :], mask)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, M, N, K, row_bytes, DECODE: tl.constexpr,
                 BLOCK_ELEMENTS: tl.constexpr, BLOCK_BYTES: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.arange(0, BLOCK_M)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        w = _weight_tile(w_ptr, row_bytes, n, k, N, K, DECODE, BLOCK_ELEMENTS, BLOCK_BYTES)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :],
                    mask=(m < M)[:, None] & (k < K)[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    tl.store(out_ptr + m[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(m < M)[:, None] & (n < N)[None, :])


@triton.jit
def _gemm_kernel(x_ptr, w_ptr, out_ptr, M, N, K, row_bytes, DECODE: tl.constexpr,
                 BLOCK_ELEMENTS: tl.constexpr, BLOCK_BYTES: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m[:, None].to(tl.int64) * K + k[None, :],
                    mask=(m < M)[:, None] & (k < K)[None, :], other=0.0)
        w = _weight_tile(w_ptr, row_bytes, n, k, N, K, DECODE, BLOCK_ELEMENTS, BLOCK_BYTES)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=DOT_PRECISION)
    out_offsets = m[:, None].to(tl.int64) * N + n[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty),
             mask=(m < M)[:, None] & (n < N)[None, :])


def fused_quant_matmul(x: torch.Tensor, packed: torch.Tensor, qtype: Q) -> torch.Tensor:
    """x float [M, K] @ W.T for W packed as uint8 [N, row_bytes] of `qtype` (in FUSED_TYPES),
    whose rows hold K elements; returns [M, N] in x's dtype."""
    x, packed = x.contiguous(), packed.contiguous()
    (M, K), N = x.shape, packed.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    elements, block_bytes = GGML_QUANT_SIZES[qtype]
    layout = dict(DECODE=DECODERS[qtype], BLOCK_ELEMENTS=elements, BLOCK_BYTES=block_bytes)
    if M <= GEMV_MAX_ROWS:
        block_m = triton.next_power_of_2(M)
        block_k = _GEMV_TILE_ELEMENTS // (block_m * _GEMV_BLOCK_N)
        grid = (triton.cdiv(N, _GEMV_BLOCK_N),)
        _gemv_kernel[grid](x, packed, out, M, N, K, packed.shape[1], **layout,
                           BLOCK_M=block_m, BLOCK_N=_GEMV_BLOCK_N, BLOCK_K=block_k)
    else:
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        grid = (triton.cdiv(M, _GEMM_BLOCK_M), triton.cdiv(N, _GEMM_BLOCK_N))
        _gemm_kernel[grid](x, packed, out, M, N, K, packed.shape[1], **layout,
                           BLOCK_M=_GEMM_BLOCK_M, BLOCK_N=_GEMM_BLOCK_N, BLOCK_K=_GEMM_BLOCK_K,
                           DOT_PRECISION=precision)
    return out
