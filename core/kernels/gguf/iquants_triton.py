"""Triton kernels dequantizing GGUF's IQ and TQ block types (layouts: see iquants_reference).

Each program turns BLOCKS whole blocks into a [BLOCKS, ELEMENTS] float32 tile. Every output
element derives from its position the byte offsets of what it needs (grid index, sign bits,
sub-block scale) and loads those bytes itself: the repeated loads of one block's bytes are L1
hits, and each kernel reads as a direct transcription of the layout. Lookup tables come in as
tensors and are gathered with tl.load. The float operations are those of the torch reference in
the same order; none is a multiply feeding an add, so no FMA contraction can change a bit.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from .common import BlockFn
from .iquants_reference import GRIDS, IQ1_DELTA, IQ4_NL_VALUES, KSIGNS

_ELEMENTS_PER_PROGRAM = 2048


# --- shared pieces ------------------------------------------------------------------------------

@triton.jit
def _block_tile(n_blocks, BLOCKS: tl.constexpr, ELEMENTS: tl.constexpr):
    """This program's blocks [BLOCKS, 1] (int64), their in-range mask, element positions [1, ELEMENTS]."""
    block = (tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)).to(tl.int64)[:, None]
    return block, block < n_blocks, tl.arange(0, ELEMENTS)[None, :]


@triton.jit
def _byte(ptr, mask):
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _le_word(ptr, mask, N_BYTES: tl.constexpr):
    """Little-endian word of N_BYTES bytes as int32 (a 4-byte word may read negative: callers
    extract their fields with _bits, which masks)."""
    word = _byte(ptr, mask)
    for i in tl.static_range(1, N_BYTES):
        word = word | (_byte(ptr + i, mask) << (8 * i))
    return word


@triton.jit
def _bits(word, shift, WIDTH: tl.constexpr):
    return (word >> shift) & ((1 << WIDTH) - 1)


@triton.jit
def _half_to_float(bits):
    return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _negate_where(values, sign_bits, bit):
    return tl.where(_bits(sign_bits, bit, 1) != 0, -values, values)


@triton.jit
def _iq_scale(d, nibble, UNIT: tl.constexpr):
    """The IQ2/IQ3_XXS sub-block scale d * (nibble + 0.5) * UNIT."""
    return d * (nibble.to(tl.float32) + 0.5) * UNIT


@triton.jit
def _ksigns_bits(ksigns_ptr, word, element):
    """Sign bits of the 8 values around `element`, from the 7-bit sign index among the 4 packed
    in the low 28 bits of `word` (one per 8 values of its 32)."""
    return tl.load(ksigns_ptr + _bits(word, 7 * ((element // 8) % 4), 7)).to(tl.int32)


# --- IQ2 / IQ3 --------------------------------------------------------------------------------

@triton.jit
def _iq2_xxs_kernel(packed_ptr, out_ptr, n_blocks, grid_ptr, ksigns_ptr,
                    BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    sub_block = src + 2 + (e // 32) * 8  # 4 grid index bytes, then the sign/scale word
    grid_index = _byte(sub_block + (e // 8) % 4, in_range)
    aux = _le_word(sub_block + 4, in_range, 4)
    scale = _iq_scale(_half_to_float(_le_word(src, in_range, 2)), _bits(aux, 28, 4), 0.25)
    values = scale * tl.load(grid_ptr + grid_index * 8 + e % 8)
    values = _negate_where(values, _ksigns_bits(ksigns_ptr, aux, e), e % 8)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


@triton.jit
def _iq2_xs_kernel(packed_ptr, out_ptr, n_blocks, grid_ptr, ksigns_ptr,
                   BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    q = _le_word(src + 2 + (e // 8) * 2, in_range, 2)
    nibble = _bits(_byte(src + 66 + e // 32, in_range), 4 * ((e // 16) % 2), 4)
    scale = _iq_scale(_half_to_float(_le_word(src, in_range, 2)), nibble, 0.25)
    values = scale * tl.load(grid_ptr + _bits(q, 0, 9) * 8 + e % 8)
    sign_bits = tl.load(ksigns_ptr + (q >> 9)).to(tl.int32)
    tl.store(out_ptr + block * ELEMENTS + e, _negate_where(values, sign_bits, e % 8), mask=in_range)


@triton.jit
def _iq2_s_kernel(packed_ptr, out_ptr, n_blocks, grid_ptr,
                  BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    high = _bits(_byte(src + 66 + e // 32, in_range), 2 * ((e // 8) % 4), 2)
    grid_index = _byte(src + 2 + e // 8, in_range) | (high << 8)
    nibble = _bits(_byte(src + 74 + e // 32, in_range), 4 * ((e // 16) % 2), 4)
    scale = _iq_scale(_half_to_float(_le_word(src, in_range, 2)), nibble, 0.25)
    values = scale * tl.load(grid_ptr + grid_index * 8 + e % 8)
    sign_bits = _byte(src + 34 + e // 8, in_range)
    tl.store(out_ptr + block * ELEMENTS + e, _negate_where(values, sign_bits, e % 8), mask=in_range)


@triton.jit
def _iq3_xxs_kernel(packed_ptr, out_ptr, n_blocks, grid_ptr, ksigns_ptr,
                    BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    grid_index = _byte(src + 2 + e // 4, in_range)
    aux = _le_word(src + 66 + (e // 32) * 4, in_range, 4)
    scale = _iq_scale(_half_to_float(_le_word(src, in_range, 2)), _bits(aux, 28, 4), 0.5)
    values = scale * tl.load(grid_ptr + grid_index * 4 + e % 4)
    values = _negate_where(values, _ksigns_bits(ksigns_ptr, aux, e), e % 8)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


@triton.jit
def _iq3_s_kernel(packed_ptr, out_ptr, n_blocks, grid_ptr,
                  BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    high = _bits(_byte(src + 66 + e // 32, in_range), (e // 4) % 8, 1)
    grid_index = _byte(src + 2 + e // 4, in_range) | (high << 8)
    nibble = _bits(_byte(src + 106 + e // 64, in_range), 4 * ((e // 32) % 2), 4)
    scale = _half_to_float(_le_word(src, in_range, 2)) * (2 * nibble + 1).to(tl.float32)
    values = scale * tl.load(grid_ptr + grid_index * 4 + e % 4)
    sign_bits = _byte(src + 74 + e // 8, in_range)
    tl.store(out_ptr + block * ELEMENTS + e, _negate_where(values, sign_bits, e % 8), mask=in_range)


# --- IQ1 --------------------------------------------------------------------------------------

@triton.jit
def _iq1_values(scale, grid_ptr, grid_index, negative_delta, e, DELTA: tl.constexpr):
    """scale * (grid value + delta), delta = -DELTA where negative_delta is set, else DELTA."""
    delta = tl.where(negative_delta != 0, -DELTA, DELTA)
    return scale * (tl.load(grid_ptr + grid_index * 8 + e % 8) + delta)


@triton.jit
def _iq1_s_kernel(packed_ptr, out_ptr, n_blocks, grid_ptr, DELTA: tl.constexpr,
                  BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    qh = _le_word(src + 34 + (e // 32) * 2, in_range, 2)
    grid_index = _byte(src + 2 + e // 8, in_range) | (_bits(qh, 3 * ((e // 8) % 4), 3) << 8)
    scale = _half_to_float(_le_word(src, in_range, 2)) * (2 * _bits(qh, 12, 3) + 1).to(tl.float32)
    values = _iq1_values(scale, grid_ptr, grid_index, _bits(qh, 15, 1), e, DELTA)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


@triton.jit
def _iq1_m_kernel(packed_ptr, out_ptr, n_blocks, grid_ptr, DELTA: tl.constexpr,
                  BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    d_bits = _bits(_le_word(src + 48, in_range, 2), 12, 4)  # d: the top nibbles of the scale words
    for k in tl.static_range(1, 4):
        d_bits = d_bits | (_bits(_le_word(src + 48 + 2 * k, in_range, 2), 12, 4) << (4 * k))
    scale_word = _le_word(src + 48 + (e // 64) * 2, in_range, 2)
    scale_bits = _bits(scale_word, 3 * ((e // 16) % 4), 3)
    scale = _half_to_float(d_bits) * (2 * scale_bits + 1).to(tl.float32)
    qh = _bits(_byte(src + 32 + e // 16, in_range), 4 * ((e // 8) % 2), 4)
    grid_index = _byte(src + e // 8, in_range) | (_bits(qh, 0, 3) << 8)
    values = _iq1_values(scale, grid_ptr, grid_index, _bits(qh, 3, 1), e, DELTA)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


# --- IQ4 --------------------------------------------------------------------------------------

@triton.jit
def _iq4_value(values_ptr, qs_ptr, e, mask):
    """IQ4_NL value of element e of a 32-value run stored as 16 bytes, low nibbles first."""
    return tl.load(values_ptr + _bits(_byte(qs_ptr + e % 16, mask), 4 * ((e // 16) % 2), 4))


@triton.jit
def _iq4_nl_kernel(packed_ptr, out_ptr, n_blocks, values_ptr,
                   BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    values = _half_to_float(_le_word(src, in_range, 2)) * _iq4_value(values_ptr, src + 2, e, in_range)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


@triton.jit
def _iq4_xs_kernel(packed_ptr, out_ptr, n_blocks, values_ptr,
                   BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    sub_block = e // 32
    low = _bits(_byte(src + 4 + sub_block // 2, in_range), 4 * (sub_block % 2), 4)
    high = _bits(_le_word(src + 2, in_range, 2), 2 * sub_block, 2)
    scale = _half_to_float(_le_word(src, in_range, 2)) * ((low | (high << 4)) - 32).to(tl.float32)
    values = scale * _iq4_value(values_ptr, src + 8 + sub_block * 16, e, in_range)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


# --- TQ ---------------------------------------------------------------------------------------

@triton.jit
def _tq1_0_kernel(packed_ptr, out_ptr, n_blocks,
                  BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    # Three runs, digit-major: 32 bytes x 5 digits, 16 bytes x 5 digits, 4 bytes x 4 digits.
    in_second = (e >= 160) & (e < 240)
    in_third = e >= 240
    byte_index = tl.where(in_third, 48 + (e - 240) % 4, tl.where(in_second, 32 + (e - 160) % 16, e % 32))
    digit = tl.where(in_third, (e - 240) // 4, tl.where(in_second, (e - 160) // 16, e // 32))
    power = tl.full(e.shape, 1, tl.int32)
    for k in tl.static_range(4):
        power = tl.where(digit > k, power * 3, power)
    # multiplying by 3**digit (mod 256) brings the digit to the top of the byte's base-3 fraction
    trit = (((_byte(src + byte_index, in_range) * power) & 0xFF) * 3) >> 8
    values = _half_to_float(_le_word(src + 52, in_range, 2)) * (trit - 1).to(tl.float32)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


@triton.jit
def _tq2_0_kernel(packed_ptr, out_ptr, n_blocks,
                  BYTES_PER_BLOCK: tl.constexpr, ELEMENTS: tl.constexpr, BLOCKS: tl.constexpr):
    block, in_range, e = _block_tile(n_blocks, BLOCKS, ELEMENTS)
    src = packed_ptr + block * BYTES_PER_BLOCK
    q = _bits(_byte(src + (e // 128) * 32 + e % 32, in_range), 2 * ((e // 32) % 4), 2)
    values = _half_to_float(_le_word(src + 64, in_range, 2)) * (q - 1).to(tl.float32)
    tl.store(out_ptr + block * ELEMENTS + e, values, mask=in_range)


# --- launching --------------------------------------------------------------------------------

@functools.cache
def _on_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A lookup table's copy on `device`, made once per device."""
    return table.to(device)


def _launcher(kernel, qtype: Q, tables: tuple[torch.Tensor, ...] = (), **constants) -> BlockFn:
    """The Dequantizer.triton function of `qtype`: table tensors and extra constexprs go to the kernel."""
    elements, bytes_per_block = GGML_QUANT_SIZES[qtype]
    blocks_per_program = _ELEMENTS_PER_PROGRAM // elements

    def dequantize(packed: torch.Tensor) -> torch.Tensor:
        n_blocks = packed.shape[0]
        out = torch.empty((n_blocks, elements), dtype=torch.float32, device=packed.device)
        if n_blocks > 0:
            kernel[(triton.cdiv(n_blocks, blocks_per_program),)](
                packed.contiguous(), out, n_blocks, *(_on_device(t, packed.device) for t in tables),
                **constants, BYTES_PER_BLOCK=bytes_per_block, ELEMENTS=elements, BLOCKS=blocks_per_program,
            )
        return out

    dequantize.__name__ = f"dequantize_{qtype.name.lower()}"
    return dequantize


dequantize_iq2_xxs = _launcher(_iq2_xxs_kernel, Q.IQ2_XXS, (GRIDS[Q.IQ2_XXS], KSIGNS))
dequantize_iq2_xs = _launcher(_iq2_xs_kernel, Q.IQ2_XS, (GRIDS[Q.IQ2_XS], KSIGNS))
dequantize_iq2_s = _launcher(_iq2_s_kernel, Q.IQ2_S, (GRIDS[Q.IQ2_S],))
dequantize_iq3_xxs = _launcher(_iq3_xxs_kernel, Q.IQ3_XXS, (GRIDS[Q.IQ3_XXS], KSIGNS))
dequantize_iq3_s = _launcher(_iq3_s_kernel, Q.IQ3_S, (GRIDS[Q.IQ3_S],))
dequantize_iq1_s = _launcher(_iq1_s_kernel, Q.IQ1_S, (GRIDS[Q.IQ1_S],), DELTA=IQ1_DELTA)
dequantize_iq1_m = _launcher(_iq1_m_kernel, Q.IQ1_M, (GRIDS[Q.IQ1_S],), DELTA=IQ1_DELTA)
dequantize_iq4_nl = _launcher(_iq4_nl_kernel, Q.IQ4_NL, (IQ4_NL_VALUES,))
dequantize_iq4_xs = _launcher(_iq4_xs_kernel, Q.IQ4_XS, (IQ4_NL_VALUES,))
dequantize_tq1_0 = _launcher(_tq1_0_kernel, Q.TQ1_0)
dequantize_tq2_0 = _launcher(_tq2_0_kernel, Q.TQ2_0)
