"""Fused dequantize-matmul (`quant_matmul`) on packed GGUF weights.

Oracle: dequantize-then-matmul, `x @ W.T` in float64 with W from the torch reference (itself
bit-exact with gguf-py, see test_gguf_dequant). The Triton kernels run interpreted here, on
shapes that leave partial tiles: N = 40 against tiles of 16 and 64 rows, and for the 32-element
types K = 160 against K-tiles of 64 to 512.
"""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from mistralrs.kernels.gguf import (block_layout, dequantize_reference, quant_matmul,
                                    quant_matmul_reference, quant_matmul_triton)
from mistralrs.kernels.cpu import activation_group, quantize_dequantize_rows
from mistralrs.kernels.gguf.triton_matmul import FUSED_TYPES
from test_gguf_dequant import GGUF_PY_QUANTIZES, random_blocks

N = 40
REQUIRED_FUSED = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def packed_weight(qtype: Q, n: int, k: int) -> torch.Tensor:
    """uint8 [n, row_bytes]: gguf-py's quantization of a random matrix where it has a quantizer,
    random blocks with modest scales otherwise."""
    rng = np.random.default_rng(int(qtype))
    if qtype in GGUF_PY_QUANTIZES:
        packed = gguf.quants.quantize(rng.standard_normal((n, k)).astype(np.float32), qtype)
        return torch.from_numpy(packed.view(np.uint8))
    elements, _ = block_layout(qtype)
    return torch.from_numpy(random_blocks(qtype, n * k // elements, rng, scale=0.01).reshape(n, -1))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def expected_product(x: torch.Tensor, packed: torch.Tensor, qtype: Q) -> torch.Tensor:
    return x.double() @ dequantize_reference(packed, qtype).double().T


def test_required_types_are_fused():
    assert FUSED_TYPES >= set(REQUIRED_FUSED)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 17], ids=lambda m: f"M{m}")
@pytest.mark.parametrize("qtype", sorted(FUSED_TYPES), ids=lambda q: q.name)
def test_fused_matches_dequantize_then_matmul(qtype, m):
    elements, _ = block_layout(qtype)
    k = 5 * elements if elements == 32 else 3 * elements
    packed = packed_weight(qtype, N, k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    out = quant_matmul_triton(x, packed, qtype)
    assert out.shape == (m, N) and out.dtype == torch.float32
    assert relative_error(out, expected_product(x, packed, qtype)) < 1e-3


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BF16_DOT_BROKEN = pytest.mark.skipif(INTERPRETED, reason="Triton's interpreter (3.9) multiplies bf16 "
                                     "tl.dot operands as their raw uint16 bits")


@pytest.mark.parametrize("m, dtype", [
    (2, torch.float16), (17, torch.float16), (2, torch.bfloat16),
    pytest.param(17, torch.bfloat16, marks=BF16_DOT_BROKEN),
], ids=str)
def test_half_precision_activations(m, dtype):
    packed = packed_weight(Q.Q8_0, N, 96)
    x = torch.randn(m, 96, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = quant_matmul_triton(x, packed, Q.Q8_0)
    assert out.dtype == dtype
    assert relative_error(out, expected_product(x, packed, Q.Q8_0)) < 1e-2


@pytest.mark.parametrize("qtype", [Q.F16, Q.TQ2_0], ids=lambda q: q.name)
def test_unfused_types_dequantize_then_matmul(qtype):
    rng = np.random.default_rng(0)
    packed = torch.from_numpy(gguf.quants.quantize(rng.standard_normal((N, 256)).astype(np.float32), qtype))
    packed = packed.view(torch.uint8)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    assert relative_error(quant_matmul_triton(x, packed, qtype), expected_product(x, packed, qtype)) < 1e-6


def test_leading_dimensions_and_cpu_dispatch():
    packed = packed_weight(Q.Q4_K, N, 256)
    x = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(0))
    expected = expected_product(x.reshape(6, 256), packed, Q.Q4_K).reshape(2, 3, N)
    assert relative_error(quant_matmul_triton(x, packed, Q.Q4_K), expected) < 1e-3
    # CPU: the native kernels, on activations quantized as llama.cpp's Q8_K
    x_as_multiplied = quantize_dequantize_rows(x.reshape(6, 256), activation_group(Q.Q4_K))
    assert relative_error(quant_matmul(x, packed, Q.Q4_K),
                          expected_product(x_as_multiplied, packed, Q.Q4_K).reshape(2, 3, N)) < 1e-5
    assert relative_error(quant_matmul_reference(x, packed, Q.Q4_K), expected) < 1e-5


def test_bad_operands_are_clear_errors():
    packed = packed_weight(Q.Q4_0, N, 64)
    with pytest.raises(ValueError, match="x has 32 features but the Q4_0 weight rows hold 64"):
        quant_matmul(torch.zeros(1, 32), packed, Q.Q4_0)
    with pytest.raises(ValueError, match="2-D"):
        quant_matmul(torch.zeros(1, 64), packed.reshape(2, 20, -1), Q.Q4_0)
    with pytest.raises(ValueError, match="whole number of 34-byte blocks"):
        quant_matmul(torch.zeros(1, 64), packed, Q.Q8_0)
    with pytest.raises(ValueError, match="not supported"):
        quant_matmul(torch.zeros(1, 64), packed, Q.Q8_1)
