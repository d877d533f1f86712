"""Per-element decoders of GGUF blocks, as `@triton.jit` helpers shared by the dequantize and the
fused matmul kernels.

Every decoder has the signature `decode(block, e, mask) -> float32`: `block` points (uint8) at the
start of the block holding each element, `e` is the element's index inside its block, and the
three broadcast to the shape of the tile being decoded, so a kernel can decode any tile it likes
(a flat run of elements, or a `[rows, k]` tile of a weight matrix). Byte offsets follow
llama.cpp's `ggml-common.h`; the arithmetic mirrors `reference.py` operation for operation.
"""
from __future__ import annotations

import triton
import triton.language as tl
from gguf import GGMLQuantizationType as Q


@triton.jit
def _load_u8(ptr, mask):
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _load_i8(ptr, mask):
    return tl.load(ptr.to(tl.pointer_type(tl.int8)), mask=mask, other=0).to(tl.int32)


@triton.jit
def _load_fp16(ptr, mask):
    return tl.load(ptr.to(tl.pointer_type(tl.float16)), mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _unpack_field(block, offset, width: tl.constexpr, bits: tl.constexpr, e, mask):
    """Field `e` of a run of packed bytes starting at `block + offset`, in ggml's order: the bytes
    form groups of `width`; a group holds 8 // bits runs of `width` fields, first every byte's
    lowest field, then the next one up (the twin of `reference._unpack_fields`)."""
    fields: tl.constexpr = 8 // bits
    byte = _load_u8(block + offset + (e // (width * fields)) * width + e % width, mask)
    return (byte >> ((e // width) % fields * bits)) & ((1 << bits) - 1)


# --- float types -----------------------------------------------------------------------------

@triton.jit
def decode_f32(block, e, mask):
    return tl.load(block.to(tl.pointer_type(tl.float32)), mask=mask, other=0.0)


@triton.jit
def decode_f16(block, e, mask):
    return _load_fp16(block, mask)


@triton.jit
def decode_bf16(block, e, mask):
    bits = tl.load(block.to(tl.pointer_type(tl.uint16)), mask=mask, other=0).to(tl.uint32)
    return (bits << 16).to(tl.float32, bitcast=True)


# --- legacy 32-element blocks ----------------------------------------------------------------

@triton.jit
def decode_q4_0(block, e, mask):
    q = _unpack_field(block, 2, 16, 4, e, mask)
    return _load_fp16(block, mask) * (q - 8).to(tl.float32)


@triton.jit
def decode_q4_1(block, e, mask):
    q = _unpack_field(block, 4, 16, 4, e, mask)
    return _load_fp16(block, mask) * q.to(tl.float32) + _load_fp16(block + 2, mask)


@triton.jit
def _five_bit_quant(block, qh_offset, e, mask):
    """Q5_0/Q5_1: a nibble from the 16 bytes after qh, bit 4 from bit e of the 32-bit qh."""
    low = _unpack_field(block, qh_offset + 4, 16, 4, e, mask)
    return low | (_unpack_field(block, qh_offset, 1, 1, e, mask) << 4)


@triton.jit
def decode_q5_0(block, e, mask):
    q = _five_bit_quant(block, 2, e, mask)
    return _load_fp16(block, mask) * (q - 16).to(tl.float32)


@triton.jit
def decode_q5_1(block, e, mask):
    q = _five_bit_quant(block, 4, e, mask)
    return _load_fp16(block, mask) * q.to(tl.float32) + _load_fp16(block + 2, mask)


@triton.jit
def decode_q8_0(block, e, mask):
    return _load_i8(block + 2 + e, mask).to(tl.float32) * _load_fp16(block, mask)


# --- K-quants: 256-element super-blocks ------------------------------------------------------

@triton.jit
def decode_q2_k(block, e, mask):
    packed_scale = _load_u8(block + e // 16, mask)
    scale = _load_fp16(block + 80, mask) * (packed_scale & 0xF).to(tl.float32)
    offset = _load_fp16(block + 82, mask) * (packed_scale >> 4).to(tl.float32)
    q = _unpack_field(block, 16, 32, 2, e, mask)
    return scale * q.to(tl.float32) - offset


@triton.jit
def decode_q3_k(block, e, mask):
    sub_block = e // 16
    low = _unpack_field(block, 96, 8, 4, sub_block, mask)
    high = _unpack_field(block, 104, 4, 2, sub_block, mask)
    scale = _load_fp16(block + 108, mask) * ((low | (high << 4)) - 32).to(tl.float32)
    hmask_bit = _unpack_field(block, 0, 32, 1, e, mask)
    q = _unpack_field(block, 32, 32, 2, e, mask) - ((hmask_bit ^ 1) << 2)
    return scale * q.to(tl.float32)


@triton.jit
def _scaled_with_min(block, q, e, mask):
    """Q4_K/Q5_K: (d * scale) * q - (dmin * min), with the 6-bit scale and min of sub-block
    e // 32 unpacked from bytes 4-15 (see `reference._k_quant_scales_and_mins`)."""
    sub_block = e // 32
    first = _load_u8(block + 4 + sub_block % 4, mask)
    second = _load_u8(block + 8 + sub_block % 4, mask)
    third = _load_u8(block + 12 + sub_block % 4, mask)
    in_first_half = sub_block < 4
    scale_code = tl.where(in_first_half, first & 63, (third & 0xF) | ((first >> 2) & 0x30))
    min_code = tl.where(in_first_half, second & 63, (third >> 4) | ((second >> 2) & 0x30))
    scale = _load_fp16(block, mask) * scale_code.to(tl.float32)
    offset = _load_fp16(block + 2, mask) * min_code.to(tl.float32)
    return scale * q.to(tl.float32) - offset


@triton.jit
def decode_q4_k(block, e, mask):
    return _scaled_with_min(block, _unpack_field(block, 16, 32, 4, e, mask), e, mask)


@triton.jit
def decode_q5_k(block, e, mask):
    q = _unpack_field(block, 48, 32, 4, e, mask) | (_unpack_field(block, 16, 32, 1, e, mask) << 4)
    return _scaled_with_min(block, q, e, mask)


@triton.jit
def decode_q6_k(block, e, mask):
    q = _unpack_field(block, 0, 64, 4, e, mask) | (_unpack_field(block, 128, 32, 2, e, mask) << 4)
    scale = _load_fp16(block + 208, mask) * _load_i8(block + 192 + e // 16, mask).to(tl.float32)
    return scale * (q - 32).to(tl.float32)


@triton.jit
def decode_q8_k(block, e, mask):
    d = tl.load(block.to(tl.pointer_type(tl.float32)), mask=mask, other=0.0)
    return d * _load_i8(block + 4 + e, mask).to(tl.float32)


DECODERS = {
    Q.F32: decode_f32,
    Q.F16: decode_f16,
    Q.BF16: decode_bf16,
    Q.Q4_0: decode_q4_0,
    Q.Q4_1: decode_q4_1,
    Q.Q5_0: decode_q5_0,
    Q.Q5_1: decode_q5_1,
    Q.Q8_0: decode_q8_0,
    Q.Q2_K: decode_q2_k,
    Q.Q3_K: decode_q3_k,
    Q.Q4_K: decode_q4_k,
    Q.Q5_K: decode_q5_k,
    Q.Q6_K: decode_q6_k,
    Q.Q8_K: decode_q8_k,
}
