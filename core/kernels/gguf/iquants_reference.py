"""Torch references for GGUF's IQ (grid / non-linear) and TQ (ternary) block types.

Each function maps packed blocks `uint8 [n_blocks, bytes_per_block]` to `float32
[n_blocks, elements_per_block]` with whole-tensor ops. Block layouts are those of llama.cpp's
`ggml-common.h` (`block_iq2_xxs`, ...). The float arithmetic follows gguf-py's `gguf.quants`
(same products, same order), so results are bit-identical to it; signs are applied by negation,
which is bit-identical to gguf-py's multiplication by +-1.

The format's lookup tables (value grids, the IQ2 sign patterns, the IQ4_NL values) are read from
gguf-py once at import rather than duplicated here; the Triton kernels use the same tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants


def _grid(quant_class) -> torch.Tensor:
    """gguf-py's decoded value grid of an IQ type: float32 [grid entries, values per entry]."""
    quant_class.init_grid()
    return torch.from_numpy(quant_class.grid.reshape(quant_class.grid_shape).copy())


GRIDS: dict[Q, torch.Tensor] = {
    Q.IQ1_S: _grid(gguf_quants.IQ1_S),  # IQ1_M uses the same grid
    Q.IQ2_XXS: _grid(gguf_quants.IQ2_XXS),
    Q.IQ2_XS: _grid(gguf_quants.IQ2_XS),
    Q.IQ2_S: _grid(gguf_quants.IQ2_S),
    Q.IQ3_XXS: _grid(gguf_quants.IQ3_XXS),
    Q.IQ3_S: _grid(gguf_quants.IQ3_S),
}
# 7-bit sign index -> 8 sign bits (bit j set: value j is negative); the 8th bit is the parity.
KSIGNS = torch.tensor(list(gguf_quants.IQ2_XXS.ksigns), dtype=torch.uint8)
IQ4_NL_VALUES = torch.tensor(gguf_quants.IQ4_NL.kvalues, dtype=torch.float32)
IQ1_DELTA = float(gguf_quants.IQ1_S.delta)


# --- byte-level helpers ------------------------------------------------------------------------

def _columns(packed: torch.Tensor, *widths: int) -> list[torch.Tensor]:
    """Cut every block into consecutive fields of `widths` bytes, each as int64 [n_blocks, width]."""
    fields, start = [], 0
    for width in widths:
        fields.append(packed[:, start:start + width].long())
        start += width
    return fields


def _le_words(byte_values: torch.Tensor, word_bytes: int) -> torch.Tensor:
    """Little-endian unsigned words of `word_bytes` bytes: [n, m * word_bytes] -> [n, m]."""
    shifts = 8 * torch.arange(word_bytes, device=byte_values.device)
    return (byte_values.reshape(byte_values.shape[0], -1, word_bytes) << shifts).sum(-1)


def _half_to_float(bits: torch.Tensor) -> torch.Tensor:
    """Reinterpret int64 values holding binary16 bit patterns as fp16, widened to float32."""
    low_high = torch.stack([bits & 0xFF, bits >> 8], dim=-1).to(torch.uint8)
    return low_high.view(torch.float16).squeeze(-1).float()


def _fields(words: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """The `count` lowest `width`-bit fields of each word, lowest first: [n, m] -> [n, m * count]."""
    shifts = width * torch.arange(count, device=words.device)
    return ((words.unsqueeze(-1) >> shifts) & ((1 << width) - 1)).flatten(-2)


def _bit_planes(byte_values: torch.Tensor, width: int, run: int) -> torch.Tensor:
    """Split bytes into `width`-bit fields, ggml's low-bit layout: within each run of `run` bytes,
    first every byte's lowest field, then the next field up. [n, m] -> [n, m * 8 // width]."""
    shifts = torch.arange(0, 8, width, device=byte_values.device).view(-1, 1)
    fields = byte_values.reshape(byte_values.shape[0], -1, 1, run) >> shifts
    return (fields & ((1 << width) - 1)).flatten(1)


def _ternary_digits(byte_values: torch.Tensor, count: int) -> torch.Tensor:
    """TQ1_0 digits: a byte holds up to 5 base-3 digits as the fraction digits / 243 scaled to
    256; multiplying by 3**k (mod 256) brings digit k to the top, where `* 3 >> 8` reads it.
    [n, m] -> [n, count * m], digit-major."""
    powers = 3 ** torch.arange(count, device=byte_values.device).view(-1, 1)
    return (((byte_values.unsqueeze(1) * powers) & 0xFF) * 3 >> 8).flatten(1)


def _groupwise(op: Callable, per_group: torch.Tensor, per_element: torch.Tensor) -> torch.Tensor:
    """op(group value, element value), each of the G values of `per_group` [n, G] covering its
    run of consecutive elements of `per_element` [n, E]."""
    n, groups = per_group.shape
    return op(per_group.unsqueeze(-1), per_element.reshape(n, groups, -1)).reshape(n, -1)


def _negate_where(values: torch.Tensor, sign_bits: torch.Tensor) -> torch.Tensor:
    return torch.where(sign_bits != 0, -values, values)


def _iq_scale(d: torch.Tensor, nibble: torch.Tensor, unit: float) -> torch.Tensor:
    """The IQ2/IQ3_XXS sub-block scale d * (nibble + 0.5) * unit."""
    return d * (nibble.float() + 0.5) * unit


def _signed_grid(scale: torch.Tensor, grid_values: torch.Tensor, sign_bits: torch.Tensor) -> torch.Tensor:
    return _negate_where(_groupwise(torch.mul, scale, grid_values), sign_bits)


# --- IQ2 / IQ3: sub-block scale * grid value, with a sign per value ------------------------------

def dequantize_iq2_xxs(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u32 qs[16]}: per 32 values two words, the first 4 grid indices (bytes), the second
    4 x 7-bit sign indices then a 4-bit scale."""
    n = packed.shape[0]
    d, qs = _columns(packed, 2, 64)
    grid = GRIDS[Q.IQ2_XXS][qs.reshape(n, 8, 8)[:, :, :4]].reshape(n, -1)
    aux = _le_words(qs, 4)[:, 1::2]
    scale = _iq_scale(_half_to_float(_le_words(d, 2)), aux >> 28, 0.25)
    signs = _fields(KSIGNS[_fields(aux, 7, 4)].long(), 1, 8)
    return _signed_grid(scale, grid, signs)


def dequantize_iq2_xs(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u16 qs[32]; u8 scales[8]}: each u16 is a 9-bit grid index and a 7-bit sign index;
    one 4-bit scale per 16 values."""
    d, qs, scales = _columns(packed, 2, 64, 8)
    q = _le_words(qs, 2)
    grid = GRIDS[Q.IQ2_XS][q & 511].flatten(1)
    scale = _iq_scale(_half_to_float(_le_words(d, 2)), _fields(scales, 4, 2), 0.25)
    signs = _fields(KSIGNS[q >> 9].long(), 1, 8)
    return _signed_grid(scale, grid, signs)


def dequantize_iq2_s(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u8 qs[32]; u8 signs[32]; u8 qh[8]; u8 scales[8]}: 10-bit grid indices (2 high bits
    in qh), explicit sign bits, one 4-bit scale per 16 values."""
    d, qs, sign_bytes, qh, scales = _columns(packed, 2, 32, 32, 8, 8)
    grid = GRIDS[Q.IQ2_S][qs | (_fields(qh, 2, 4) << 8)].flatten(1)
    scale = _iq_scale(_half_to_float(_le_words(d, 2)), _fields(scales, 4, 2), 0.25)
    return _signed_grid(scale, grid, _fields(sign_bytes, 1, 8))


def dequantize_iq3_xxs(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u8 qs[64]; u32 scales_and_signs[8]}: 4-value grid entries; per 32 values a word of
    4 x 7-bit sign indices then a 4-bit scale."""
    d, qs, words = _columns(packed, 2, 64, 32)
    aux = _le_words(words, 4)
    grid = GRIDS[Q.IQ3_XXS][qs].flatten(1)
    scale = _iq_scale(_half_to_float(_le_words(d, 2)), aux >> 28, 0.5)
    signs = _fields(KSIGNS[_fields(aux, 7, 4)].long(), 1, 8)
    return _signed_grid(scale, grid, signs)


def dequantize_iq3_s(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4]}: 9-bit indices into 4-value grid
    entries, explicit sign bits, scale d * (1 + 2 * nibble) per 32 values."""
    d, qs, qh, sign_bytes, scales = _columns(packed, 2, 64, 8, 32, 4)
    grid = GRIDS[Q.IQ3_S][qs | (_fields(qh, 1, 8) << 8)].flatten(1)
    scale = _half_to_float(_le_words(d, 2)) * (2 * _fields(scales, 4, 2) + 1).float()
    return _signed_grid(scale, grid, _fields(sign_bytes, 1, 8))


# --- IQ1: sub-block scale * (ternary grid value + shared +-delta) --------------------------------

def _iq1_values(scale: torch.Tensor, grid_index: torch.Tensor, negative_delta: torch.Tensor) -> torch.Tensor:
    """scale [n, S] * (grid value + delta), with delta = -+IQ1_DELTA per run of values [n, G]."""
    delta = torch.where(negative_delta != 0, -IQ1_DELTA, IQ1_DELTA).float()
    shifted = _groupwise(torch.add, delta, GRIDS[Q.IQ1_S][grid_index].flatten(1))
    return _groupwise(torch.mul, scale, shifted)


def dequantize_iq1_s(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u8 qs[32]; u16 qh[8]}: per 32 values a u16 with 4 x 3 high index bits, a 3-bit
    scale (d * (2 s + 1)) and the delta's sign bit."""
    d, qs, qh = _columns(packed, 2, 32, 16)
    qh = _le_words(qh, 2)
    scale = _half_to_float(_le_words(d, 2)) * (2 * ((qh >> 12) & 7) + 1).float()
    return _iq1_values(scale, qs | (_fields(qh, 3, 4) << 8), qh >> 15)


def dequantize_iq1_m(packed: torch.Tensor) -> torch.Tensor:
    """{u8 qs[32]; u8 qh[16]; u16 scales[4]}: no separate d; its 16 bits are the top nibbles of
    the 4 scale words. Each qh nibble gives 3 high index bits and the delta's sign for 8 values;
    3-bit scales (d * (2 s + 1)) per 16 values."""
    qs, qh, scales = _columns(packed, 32, 16, 8)
    scales = _le_words(scales, 2)
    d_bits = ((scales >> 12) << torch.arange(0, 16, 4, device=packed.device)).sum(-1, keepdim=True)
    scale = _half_to_float(d_bits) * (2 * _fields(scales, 3, 4) + 1).float()
    nibbles = _fields(qh, 4, 2)
    return _iq1_values(scale, qs | ((nibbles & 7) << 8), nibbles >> 3)


# --- IQ4: non-linear 4-bit values -------------------------------------------------------------

def dequantize_iq4_nl(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u8 qs[16]}: 32 values, low nibbles first; x = d * IQ4_NL_VALUES[nibble]."""
    d, qs = _columns(packed, 2, 16)
    return _half_to_float(_le_words(d, 2)) * IQ4_NL_VALUES[_bit_planes(qs, 4, 16)]


def dequantize_iq4_xs(packed: torch.Tensor) -> torch.Tensor:
    """{fp16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: IQ4_NL values with a signed 6-bit scale
    (low nibble in scales_l, 2 high bits in scales_h, minus 32) per 32 values."""
    d, scales_h, scales_l, qs = _columns(packed, 2, 2, 4, 128)
    sub_scales = (_fields(scales_l, 4, 2) | (_fields(_le_words(scales_h, 2), 2, 8) << 4)) - 32
    scale = _half_to_float(_le_words(d, 2)) * sub_scales.float()
    return _groupwise(torch.mul, scale, IQ4_NL_VALUES[_bit_planes(qs, 4, 16)])


# --- TQ: ternary {-1, 0, 1} * d --------------------------------------------------------------

def dequantize_tq1_0(packed: torch.Tensor) -> torch.Tensor:
    """{u8 qs[48]; u8 qh[4]; fp16 d}: 5 base-3 digits per qs byte (32 bytes, then 16), 4 per qh byte."""
    qs, qh, d = _columns(packed, 48, 4, 2)
    digits = torch.cat(
        [_ternary_digits(qs[:, :32], 5), _ternary_digits(qs[:, 32:], 5), _ternary_digits(qh, 4)], dim=1
    )
    return _half_to_float(_le_words(d, 2)) * (digits - 1).float()


def dequantize_tq2_0(packed: torch.Tensor) -> torch.Tensor:
    """{u8 qs[64]; fp16 d}: 2-bit digits, in ggml's bit-plane order over runs of 32 bytes."""
    qs, d = _columns(packed, 64, 2)
    return _half_to_float(_le_words(d, 2)) * (_bit_planes(qs, 2, 32) - 1).float()
