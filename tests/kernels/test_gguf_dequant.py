"""GGUF dequantization of the float, legacy and K-quant types.

Oracle: gguf-py's `gguf.quants.dequantize`, bit for bit, on blocks made by gguf-py's quantizer
where it has one and on random bytes; Q8_K, which gguf-py cannot dequantize, against its
definition in llama.cpp (`dequantize_row_q8_K`: x = d * q). The Triton kernel (interpreted here)
must equal the torch reference bit for bit: it runs with FMA contraction off.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from mistralrs.kernels.gguf import (block_layout, dequantize, dequantize_reference,
                                    dequantize_triton)
from mistralrs.kernels.gguf.reference import BLOCK_DEQUANTIZERS

OWN_TYPES = list(BLOCK_DEQUANTIZERS)
FLOAT_TYPES = [Q.F32, Q.F16, Q.BF16]
GGUF_PY_QUANTIZES = FLOAT_TYPES + [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]

# Byte offsets of each block's float fields (scales and mins), from llama.cpp's ggml-common.h.
FP16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
FP32_FIELDS = {Q.Q8_K: [0]}


def _finite_bits(rng: np.random.Generator, n: int, dtype: type) -> np.ndarray:
    """Random bit patterns of a float type, all finite: zeros, subnormals, normals up to the max."""
    uint, exponent_msb = (np.uint16, 0x4000) if dtype == np.float16 else (np.uint32, 0x40000000)
    bits = rng.integers(0, np.iinfo(uint).max, n, dtype=uint, endpoint=True)
    value = bits.view(dtype)
    return np.where(np.isfinite(value), bits, bits ^ uint(exponent_msb)).view(np.uint8).reshape(n, -1)


def random_blocks(qtype: Q, n_blocks: int, rng: np.random.Generator, scale: float | None = None) -> np.ndarray:
    """Random packed blocks uint8 [n_blocks, bytes_per_block]. The scale fields of quantized types
    are made finite: random finite bit patterns, or normal(0, scale) values when `scale` is given.
    Float types keep every bit pattern, NaN and infinities included."""
    _, block_bytes = block_layout(qtype)
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for fields, dtype in ((FP16_FIELDS, np.float16), (FP32_FIELDS, np.float32)):
        width = np.dtype(dtype).itemsize
        for offset in fields.get(qtype, []):
            if scale is None:
                blocks[:, offset:offset + width] = _finite_bits(rng, n_blocks, dtype)
            else:
                values = (rng.standard_normal(n_blocks) * scale).astype(dtype)
                blocks[:, offset:offset + width] = values.view(np.uint8).reshape(n_blocks, width)
    return blocks


def assert_bit_equal(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray) -> None:
    """Same float32 bits everywhere, except that any NaN matches any NaN."""
    actual, expected = np.asarray(actual, dtype=np.float32), np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    np.testing.assert_array_equal(actual[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def gguf_py_dequantize(packed: np.ndarray, qtype: Q) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return gguf.quants.dequantize(packed, qtype)


@pytest.mark.parametrize("qtype", GGUF_PY_QUANTIZES, ids=lambda q: q.name)
def test_reference_matches_gguf_py_on_quantized_tensors(qtype):
    rng = np.random.default_rng(int(qtype))
    data = rng.standard_normal((6, 512)).astype(np.float32) * np.float32([[1e-4], [1], [30], [1], [1], [1]])
    data[3] = 0.0  # all-zero blocks: d = 0
    data[4, ::7] = 1e4  # outliers
    data[5] = np.abs(data[5])  # positive-only blocks: min > 0 for Q4_1/Q5_1
    packed = gguf.quants.quantize(data, qtype).view(np.uint8)
    assert_bit_equal(dequantize_reference(torch.from_numpy(packed), qtype), gguf_py_dequantize(packed, qtype))


@pytest.mark.parametrize("qtype", [q for q in OWN_TYPES if q != Q.Q8_K], ids=lambda q: q.name)
def test_reference_matches_gguf_py_on_random_blocks(qtype):
    elements, _ = block_layout(qtype)
    packed = random_blocks(qtype, 4096 // elements, np.random.default_rng(int(qtype))).reshape(8, -1)
    assert_bit_equal(dequantize_reference(torch.from_numpy(packed), qtype), gguf_py_dequantize(packed, qtype))


def test_q8_k_reference_matches_its_definition():
    """gguf-py has no Q8_K; block_q8_K is {float d; int8 qs[256]; int16 bsums[16]}, x = d * q."""
    packed = random_blocks(Q.Q8_K, 16, np.random.default_rng(0))
    d = packed[:, :4].copy().view(np.float32)
    with np.errstate(over="ignore"):
        expected = d * packed[:, 4:260].view(np.int8).astype(np.float32)
    assert_bit_equal(dequantize_reference(torch.from_numpy(packed), Q.Q8_K), expected)


@pytest.mark.parametrize("qtype", OWN_TYPES, ids=lambda q: q.name)
def test_triton_matches_reference(qtype):
    elements, _ = block_layout(qtype)
    n_blocks = 3 if elements == 256 else (6 if elements == 32 else 250)
    packed = torch.from_numpy(random_blocks(qtype, 2 * n_blocks, np.random.default_rng(int(qtype))))
    rows = packed.reshape(2, -1)
    assert_bit_equal(dequantize_triton(rows, qtype), dequantize_reference(rows, qtype))


def test_dequantize_api_shapes_and_dispatch():
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(random_blocks(Q.Q4_K, 6, rng, scale=0.01)).reshape(3, 2 * 144)
    expected = dequantize_reference(rows, Q.Q4_K)
    assert expected.shape == (3, 512) and expected.dtype == torch.float32
    assert_bit_equal(dequantize(rows, Q.Q4_K), expected)  # CPU: the torch path
    assert_bit_equal(dequantize(rows, int(Q.Q4_K), shape_last=512), expected)
    assert_bit_equal(dequantize(rows.flatten(), Q.Q4_K, shape_last=512), expected)
    assert_bit_equal(dequantize(rows.reshape(1, 3, -1), Q.Q4_K)[0], expected)
    assert block_layout(Q.Q4_K) == (256, 144) and block_layout(int(Q.Q8_0)) == (32, 34)


@pytest.mark.parametrize("qtype", [Q.Q8_1, Q.I8, Q.MXFP4, 99], ids=str)
def test_unsupported_type_is_a_clear_error(qtype):
    with pytest.raises(ValueError, match="not supported|not a GGML quantization type"):
        dequantize(torch.zeros(2, 36, dtype=torch.uint8), qtype)


def test_wrong_row_length_is_a_clear_error():
    with pytest.raises(ValueError, match="whole number of 18-byte blocks"):
        dequantize(torch.zeros(2, 20, dtype=torch.uint8), Q.Q4_0)
    with pytest.raises(ValueError, match="whole number of 256-element blocks"):
        dequantize(torch.zeros(2, 144, dtype=torch.uint8), Q.Q4_K, shape_last=128)
    with pytest.raises(ValueError, match="rows of 64 elements take 68 bytes; got rows of 34"):
        dequantize(torch.zeros(2, 34, dtype=torch.uint8), Q.Q8_0, shape_last=64)
    with pytest.raises(ValueError, match="102 bytes are not a whole number of Q8_0 rows"):
        dequantize(torch.zeros(102, dtype=torch.uint8), Q.Q8_0, shape_last=64)
    with pytest.raises(TypeError, match="uint8"):
        dequantize(torch.zeros(2, 18, dtype=torch.int8), Q.Q4_0)
