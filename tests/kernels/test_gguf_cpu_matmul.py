"""`cpu_matmul`, the CPU kernels of `quant_matmul`, against `quant_matmul_reference`
(dequantize with the torch reference, bit-exact with gguf-py, then matmul).

Tolerance: |fast - reference| <= 1e-5 * max|reference| (+1e-6). Both compute in float32 and
differ only in summation order. Shapes are odd on purpose: N = 37 rows, K of 1 and 3 blocks;
M = 1 and 3 run the fused GEMV, M = 4 and 9 the decode-to-float32 + GEMM path. Every supported
type compiles its own kernels once (torch.compile), a few seconds each with inductor's disk
cache cold.
"""
from __future__ import annotations

import logging

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from mistralrs.kernels.gguf import block_layout, cpu_matmul, quant_matmul, quant_matmul_reference
from test_gguf_matmul import packed_weight

TYPES = sorted(cpu_matmul.SUPPORTED_TYPES, key=int)


def assert_close_to_reference(out: torch.Tensor, x: torch.Tensor, packed: torch.Tensor,
                              qtype: Q) -> None:
    expected = quant_matmul_reference(x, packed, qtype)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert torch.isfinite(expected).all()
    tolerance = 1e-5 * expected.abs().max().item() + 1e-6
    assert (out - expected).abs().max().item() <= tolerance


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_every_type_matches_the_reference(qtype, blocks):
    elements, _ = block_layout(qtype)
    packed = packed_weight(qtype, 37, blocks * elements)
    weight = cpu_matmul.prepare(packed, qtype)
    for m in (1, 3, 4, 9):
        x = torch.randn(m, blocks * elements, generator=torch.Generator().manual_seed(m))
        assert_close_to_reference(cpu_matmul.matmul(x, weight), x, packed, qtype)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q8_0], ids=lambda q: q.name)
def test_four_bit_types_and_q8_0_read_the_packed_bytes_in_place(qtype):
    """No copy of the weight: the kernels read the file's own bytes (a memory-mapped GGUF stays
    the only copy); only the per-group scales are new."""
    packed = packed_weight(qtype, 8, 256)
    weight = cpu_matmul.prepare(packed, qtype)
    assert weight.data.data_ptr() == packed.data_ptr()
    assert weight.data.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()


def test_quant_matmul_on_cpu_runs_the_fast_path_with_leading_dimensions_and_dtypes():
    packed = packed_weight(Q.Q4_K, 37, 512)
    x = torch.randn(2, 3, 512, generator=torch.Generator().manual_seed(0))
    out = quant_matmul(x, packed, Q.Q4_K)
    assert out.shape == (2, 3, 37)
    assert_close_to_reference(out.reshape(6, 37), x.reshape(6, 512), packed, Q.Q4_K)
    half = quant_matmul(x.bfloat16(), packed, Q.Q4_K)
    assert half.dtype == torch.bfloat16
    assert quant_matmul(torch.zeros(0, 512), packed, Q.Q4_K).shape == (0, 37)


def test_large_weights_are_decoded_in_row_tiles(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "TILE_BYTES", 4 * 256 * 10)  # 10 rows a tile: 4 tiles
    packed = packed_weight(Q.Q8_0, 37, 256)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(1))
    assert_close_to_reference(cpu_matmul.matmul(x, cpu_matmul.prepare(packed, Q.Q8_0)), x,
                              packed, Q.Q8_0)


def test_kernels_run_eagerly_where_torch_compile_fails(monkeypatch, caplog):
    def no_compiler(fn, **options):
        def fail(*args):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    kernel = cpu_matmul._Compiled(cpu_matmul._KERNELS[Q.Q4_1][0].fn)
    packed = packed_weight(Q.Q4_1, 37, 64)
    weight = cpu_matmul.prepare(packed, Q.Q4_1)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING):
        out = kernel(x, weight.data, weight.scale, weight.offset)
    assert "running them eagerly" in caplog.text
    assert_close_to_reference(out, x, packed, Q.Q4_1)
