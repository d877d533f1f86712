"""Torch references for the float, legacy (Q4_0 ... Q8_0) and K-quant (Q2_K ... Q8_K) GGUF blocks.

Each function maps packed blocks `uint8 [n_blocks, bytes_per_block]` to `float32
[n_blocks, elements_per_block]` with whole-tensor ops: they are the test oracle for the Triton
kernels and the CPU path. The block layouts are those of llama.cpp's `ggml-common.h`. The float
arithmetic (which products are formed first, where fp16 becomes fp32, `a * b - c` as two roundings)
follows gguf-py's `gguf.quants`, so that the results are bit-identical to it.
"""
from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as Q

from .common import BlockFn

QK_K = 256  # elements in a K-quant super-block


def _fp16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of every block, as float32 [n_blocks, 1]."""
    return blocks[:, offset:offset + 2].contiguous().view(torch.float16).float()


def _unpack_fields(packed: torch.Tensor, width: int, bits: int) -> torch.Tensor:
    """Split bytes into `bits`-wide fields, the way ggml lays out its low-bit quants.

    `packed` [n, groups * width] is read as `groups` runs of `width` bytes; each run yields
    8 // bits runs of `width` values: first every byte's lowest field, then the next field up.
    Returns uint8 [n, groups * width * 8 // bits].
    """
    n = packed.shape[0]
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device).view(1, 1, -1, 1)
    fields = packed.reshape(n, -1, 1, width) >> shifts
    return (fields & ((1 << bits) - 1)).reshape(n, -1)


def _per_sub_block(scale: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape values [n, E] to [n, S, E // S] to meet per-sub-block scales [n, S] as [n, S, 1]."""
    n, sub_blocks = scale.shape
    return scale.reshape(n, sub_blocks, 1), values.reshape(n, sub_blocks, -1)


# --- float types (one element per "block") ---------------------------------------------------

def dequantize_f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


def dequantize_f16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).float()


def dequantize_bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).float()


# --- legacy 32-element blocks ---------------------------------------------------------------

def dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u8 qs[16]}: low nibbles are elements 0-15, high nibbles 16-31; x = d * (q - 8)."""
    d = _fp16(blocks, 0)
    q = _unpack_fields(blocks[:, 2:], width=16, bits=4).to(torch.int8) - 8
    return d * q.float()


def dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """{fp16 d; fp16 m; u8 qs[16]}: x = d * q + m."""
    d, m = _fp16(blocks, 0), _fp16(blocks, 2)
    q = _unpack_fields(blocks[:, 4:], width=16, bits=4)
    return d * q.float() + m


def _five_bit_quants(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1 quants: nibbles of qs, bit 4 from bit j of the little-endian 32-bit qh."""
    high = _unpack_fields(qh, width=1, bits=1)
    return _unpack_fields(qs, width=16, bits=4) | (high << 4)


def dequantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u8 qh[4]; u8 qs[16]}: x = d * (q - 16)."""
    d = _fp16(blocks, 0)
    q = _five_bit_quants(blocks[:, 2:6], blocks[:, 6:]).to(torch.int8) - 16
    return d * q.float()


def dequantize_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    """{fp16 d; fp16 m; u8 qh[4]; u8 qs[16]}: x = d * q + m."""
    d, m = _fp16(blocks, 0), _fp16(blocks, 2)
    q = _five_bit_quants(blocks[:, 4:8], blocks[:, 8:])
    return d * q.float() + m


def dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """{fp16 d; i8 qs[32]}: x = q * d."""
    d = _fp16(blocks, 0)
    q = blocks[:, 2:].contiguous().view(torch.int8)
    return q.float() * d


# --- K-quants: 256-element super-blocks -----------------------------------------------------

def dequantize_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """{u8 scales[16]; u8 qs[64]; fp16 d; fp16 dmin}: 16 sub-blocks of 16, each with a 4-bit
    scale (low nibble) and 4-bit min (high nibble); x = (d * scale) * q - (dmin * min)."""
    scales = blocks[:, :16]
    d, dmin = _fp16(blocks, 80), _fp16(blocks, 82)
    q = _unpack_fields(blocks[:, 16:80], width=32, bits=2).float()
    scale, q = _per_sub_block(d * (scales & 0xF).float(), q)
    offset, _ = _per_sub_block(dmin * (scales >> 4).float(), q)
    return (scale * q - offset).reshape(-1, QK_K)


def _q3_k_scales(packed: torch.Tensor) -> torch.Tensor:
    """The 16 signed 6-bit scales of Q3_K: low nibbles from bytes 0-7, 2 high bits from 8-11."""
    low = _unpack_fields(packed[:, :8], width=8, bits=4)
    high = _unpack_fields(packed[:, 8:], width=4, bits=2)
    return (low | (high << 4)).to(torch.int8) - 32


def dequantize_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """{u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d}: a 2-bit quant from qs, minus 4 where the
    hmask bit is clear; x = (d * scale) * q over 16 sub-blocks of 16."""
    low = _unpack_fields(blocks[:, 32:96], width=32, bits=2).to(torch.int8)
    high = _unpack_fields(blocks[:, :32], width=32, bits=1) ^ 1
    q = (low - (high << 2).to(torch.int8)).float()
    d = _fp16(blocks, 108)
    scale, q = _per_sub_block(d * _q3_k_scales(blocks[:, 96:108]).float(), q)
    return (scale * q).reshape(-1, QK_K)


def _k_quant_scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 unsigned 6-bit scales and mins of Q4_K/Q5_K from their 12 packed bytes.

    Bytes 0-3 and 4-7 hold scales and mins 0-3 in their low 6 bits; scales and mins 4-7 take
    their low 4 bits from the nibbles of bytes 8-11 and their 2 high bits from the top of 0-7.
    """
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([first & 63, (third & 0xF) | ((first >> 2) & 0x30)], dim=1)
    mins = torch.cat([second & 63, (third >> 4) | ((second >> 2) & 0x30)], dim=1)
    return scales, mins


def _scaled_with_min(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: x = (d * scale) * q - (dmin * min) over 8 sub-blocks of 32."""
    d, dmin = _fp16(blocks, 0), _fp16(blocks, 2)
    scales, mins = _k_quant_scales_and_mins(blocks[:, 4:16])
    scale, q = _per_sub_block(d * scales.float(), q.float())
    offset, _ = _per_sub_block(dmin * mins.float(), q)
    return (scale * q - offset).reshape(-1, QK_K)


def dequantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """{fp16 d; fp16 dmin; u8 scales[12]; u8 qs[128]}."""
    return _scaled_with_min(blocks, _unpack_fields(blocks[:, 16:], width=32, bits=4))


def dequantize_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """{fp16 d; fp16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: bit 4 of element e is bit
    e // 32 of qh[e % 32]."""
    low = _unpack_fields(blocks[:, 48:], width=32, bits=4)
    high = _unpack_fields(blocks[:, 16:48], width=32, bits=1)
    return _scaled_with_min(blocks, low | (high << 4))


def dequantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """{u8 ql[128]; u8 qh[64]; i8 scales[16]; fp16 d}: x = (d * scale) * (q - 32) over 16
    sub-blocks of 16."""
    low = _unpack_fields(blocks[:, :128], width=64, bits=4)
    high = _unpack_fields(blocks[:, 128:192], width=32, bits=2)
    q = ((low | (high << 4)).to(torch.int8) - 32).float()
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    scale, q = _per_sub_block(_fp16(blocks, 208) * scales, q)
    return (scale * q).reshape(-1, QK_K)


def dequantize_q8_k(blocks: torch.Tensor) -> torch.Tensor:
    """{fp32 d; i8 qs[256]; i16 bsums[16]}: x = d * q (bsums only serve llama.cpp's dot products)."""
    d = blocks[:, :4].contiguous().view(torch.float32)
    q = blocks[:, 4:4 + QK_K].contiguous().view(torch.int8)
    return d * q.float()


BLOCK_DEQUANTIZERS: dict[Q, BlockFn] = {
    Q.F32: dequantize_f32,
    Q.F16: dequantize_f16,
    Q.BF16: dequantize_bf16,
    Q.Q4_0: dequantize_q4_0,
    Q.Q4_1: dequantize_q4_1,
    Q.Q5_0: dequantize_q5_0,
    Q.Q5_1: dequantize_q5_1,
    Q.Q8_0: dequantize_q8_0,
    Q.Q2_K: dequantize_q2_k,
    Q.Q3_K: dequantize_q3_k,
    Q.Q4_K: dequantize_q4_k,
    Q.Q5_K: dequantize_q5_k,
    Q.Q6_K: dequantize_q6_k,
    Q.Q8_K: dequantize_q8_k,
}
