"""IQ / TQ GGUF dequantization: torch reference vs gguf-py (bit-exact), Triton vs reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from mistralrs.kernels.gguf.iquants import DEQUANTIZERS

TYPES = [
    Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_NL, Q.IQ4_XS, Q.TQ1_0, Q.TQ2_0,
]
D_OFFSET = {Q.TQ1_0: 52, Q.TQ2_0: 64}  # byte offset of the fp16 d where it is not 0
IQ1_M_SCALES_OFFSET = 48  # IQ1_M spreads d over the top nibbles of the 4 u16 scale words here


def random_blocks(qtype: Q, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes whose fp16 d is a moderate finite value (the first two blocks: +0 and -0)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_blocks, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    d = rng.uniform(-1, 1, n_blocks).astype(np.float16)
    d[:2] = [0.0, -0.0]
    if qtype == Q.IQ1_M:
        start = IQ1_M_SCALES_OFFSET
        words = blocks[:, start:start + 8].copy().view(np.uint16)
        d_bits = d.view(np.uint16)
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((d_bits >> (4 * k)) & 0xF) << 12)
        blocks[:, start:start + 8] = words.view(np.uint8)
    else:
        start = D_OFFSET.get(qtype, 0)
        blocks[:, start:start + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype == torch.float32
    assert actual.shape == expected.shape
    assert torch.isfinite(expected).all()
    mismatches = (actual.view(torch.int32) != expected.view(torch.int32)).sum().item()
    assert mismatches == 0, f"{mismatches} values differ in their bits"


def test_table_covers_the_iq_and_tq_types():
    assert set(DEQUANTIZERS) == set(TYPES)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_reference_matches_gguf_py_bit_exactly(qtype):
    blocks = random_blocks(qtype, n_blocks=96, seed=int(qtype))
    expected = gguf_quants.dequantize(blocks, qtype).reshape(blocks.shape[0], -1)
    assert_same_bits(DEQUANTIZERS[qtype].reference(torch.from_numpy(blocks)), torch.from_numpy(expected))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_triton_matches_reference_bit_exactly(qtype):
    # One full program's worth of blocks plus a partial one, to exercise the block mask.
    elements = GGML_QUANT_SIZES[qtype][0]
    packed = torch.from_numpy(random_blocks(qtype, n_blocks=2048 // elements + 3, seed=100 + int(qtype)))
    dequantizer = DEQUANTIZERS[qtype]
    assert_same_bits(dequantizer.triton(packed), dequantizer.reference(packed))


def test_triton_accepts_zero_blocks():
    empty = torch.empty((0, GGML_QUANT_SIZES[Q.IQ4_XS][1]), dtype=torch.uint8)
    assert DEQUANTIZERS[Q.IQ4_XS].triton(empty).shape == (0, 256)
