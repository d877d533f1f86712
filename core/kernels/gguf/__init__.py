"""GGUF weights kept packed: dequantization of every block type and `x @ W.T` on packed W.

Each function takes `packed`, the uint8 bytes of a tensor's rows (`[rows, row_bytes]`, each row a
whole number of blocks), and its `gguf.GGMLQuantizationType` (or the type's integer id). The plain
functions dispatch by device: Triton on CUDA, the torch reference elsewhere; the `_reference` and
`_triton` variants force one path (tests compare them).

Types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K and Q8_K (`reference.py`,
`triton_dequant.py`), and the IQ/TQ types (`iquants.py`). Q8_1 is absent: it is llama.cpp's
activation format for dot products and gguf-py cannot dequantize it either.
"""
from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from . import reference, triton_dequant
from .common import Dequantizer
from .iquants import DEQUANTIZERS as IQ_DEQUANTIZERS
from .layout import as_qtype, as_rows, block_layout, row_elements
from .triton_matmul import FUSED_TYPES, fused_quant_matmul

__all__ = [
    "DEQUANTIZERS", "block_layout", "dequantize", "dequantize_reference", "dequantize_triton",
    "quant_matmul", "quant_matmul_cpu", "quant_matmul_reference", "quant_matmul_triton",
]

DEQUANTIZERS: dict[GGMLQuantizationType, Dequantizer] = {
    **{qtype: Dequantizer(reference.BLOCK_DEQUANTIZERS[qtype], triton_dequant.BLOCK_DEQUANTIZERS[qtype])
       for qtype in reference.BLOCK_DEQUANTIZERS},
    **IQ_DEQUANTIZERS,
}

QType = GGMLQuantizationType | int


def _supported(qtype: QType) -> GGMLQuantizationType:
    qtype = as_qtype(qtype)
    if qtype not in DEQUANTIZERS:
        names = ", ".join(sorted(q.name for q in DEQUANTIZERS))
        raise ValueError(f"GGUF type {qtype.name} is not supported (supported: {names})")
    return qtype


def _dequantize(packed: torch.Tensor, qtype: QType, shape_last: int | None, use_triton: bool) -> torch.Tensor:
    qtype = _supported(qtype)
    rows = as_rows(packed, qtype, shape_last)
    dequantizer = DEQUANTIZERS[qtype]
    block_fn = dequantizer.triton if use_triton else dequantizer.reference
    values = block_fn(rows.reshape(-1, GGML_QUANT_SIZES[qtype][1]))
    return values.reshape(*rows.shape[:-1], row_elements(qtype, rows.shape[-1]))


def dequantize(packed: torch.Tensor, qtype: QType, shape_last: int | None = None) -> torch.Tensor:
    """uint8 [..., row_bytes] -> float32 [..., row_elements], in gguf-py's element order.

    `shape_last`, the tensor's innermost dimension, is checked against the rows when given, and
    lets `packed` be a flat 1-D byte buffer, regrouped into rows of that many elements.
    ValueError for an unsupported type or rows that are not whole blocks.
    """
    return _dequantize(packed, qtype, shape_last, use_triton=packed.is_cuda)


def dequantize_reference(packed: torch.Tensor, qtype: QType, shape_last: int | None = None) -> torch.Tensor:
    return _dequantize(packed, qtype, shape_last, use_triton=False)


def dequantize_triton(packed: torch.Tensor, qtype: QType, shape_last: int | None = None) -> torch.Tensor:
    return _dequantize(packed, qtype, shape_last, use_triton=True)


def _checked_matmul_type(x: torch.Tensor, packed: torch.Tensor, qtype: QType) -> GGMLQuantizationType:
    qtype = _supported(qtype)
    if packed.dim() != 2:
        raise ValueError(f"a packed weight must be 2-D [N, row_bytes], got shape {tuple(packed.shape)}")
    in_features = row_elements(qtype, packed.shape[1])
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features but the {qtype.name} weight rows hold {in_features}")
    return qtype


def quant_matmul(x: torch.Tensor, packed: torch.Tensor, qtype: QType) -> torch.Tensor:
    """x float [..., K] @ W.T -> [..., N] in x's dtype, for W packed as uint8 [N, K_bytes].

    On CUDA the quantized types run fused kernels (W decoded in registers: a GEMV for up to
    `GEMV_MAX_ROWS` rows of x, a tiled GEMM beyond); elsewhere `quant_matmul_cpu`. The float
    and IQ types dequantize W first.
    """
    return (quant_matmul_triton if x.is_cuda else quant_matmul_cpu)(x, packed, qtype)


def quant_matmul_cpu(x: torch.Tensor, packed: torch.Tensor, qtype: QType) -> torch.Tensor:
    """The native CPU kernels (`mistralrs.kernels.cpu`: x quantized to int8 per 32 or 256
    columns, as llama.cpp) for the types they take, the reference otherwise. This repacks W on
    every call; a layer that calls it repeatedly keeps `cpu.repack(packed, qtype)` and a
    `cpu.PackedLinears` instead."""
    from mistralrs.kernels import cpu

    qtype = _checked_matmul_type(x, packed, qtype)
    repacked = cpu.repack(packed, qtype)
    if repacked is None:
        return quant_matmul_reference(x, packed, qtype)
    return cpu.PackedLinears([repacked])(x).to(x.dtype)


def quant_matmul_reference(x: torch.Tensor, packed: torch.Tensor, qtype: QType) -> torch.Tensor:
    qtype = _checked_matmul_type(x, packed, qtype)
    return x @ dequantize_reference(packed, qtype).to(x.dtype).T


def quant_matmul_triton(x: torch.Tensor, packed: torch.Tensor, qtype: QType) -> torch.Tensor:
    qtype = _checked_matmul_type(x, packed, qtype)
    if qtype not in FUSED_TYPES:
        return x @ dequantize_triton(packed, qtype).to(x.dtype).T
    out = fused_quant_matmul(x.reshape(-1, x.shape[-1]), packed, qtype)
    return out.reshape(*x.shape[:-1], packed.shape[0])
