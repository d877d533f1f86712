"""Rows of packed GGUF blocks: type names, block sizes, and the checks that catch a wrong row."""
from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


def as_qtype(qtype: GGMLQuantizationType | int) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(qtype)
    except ValueError:
        raise ValueError(f"{qtype!r} is not a GGML quantization type") from None


def block_layout(qtype: GGMLQuantizationType | int) -> tuple[int, int]:
    """(elements_per_block, bytes_per_block) of a GGML type."""
    return GGML_QUANT_SIZES[as_qtype(qtype)]


def row_elements(qtype: GGMLQuantizationType, row_bytes: int) -> int:
    """Elements in a row of `row_bytes` packed bytes; ValueError unless it is whole blocks."""
    elements, block_bytes = GGML_QUANT_SIZES[qtype]
    if row_bytes % block_bytes:
        raise ValueError(f"a {qtype.name} row must be a whole number of {block_bytes}-byte blocks "
                         f"({elements} elements each); got {row_bytes} bytes")
    return row_bytes // block_bytes * elements


def row_bytes(qtype: GGMLQuantizationType, elements: int) -> int:
    """Packed bytes of a row of `elements` values; ValueError unless it is whole blocks."""
    block_elements, block_bytes = GGML_QUANT_SIZES[qtype]
    if elements % block_elements:
        raise ValueError(f"a {qtype.name} row must be a whole number of {block_elements}-element "
                         f"blocks; got {elements} elements")
    return elements // block_elements * block_bytes


def as_rows(packed: torch.Tensor, qtype: GGMLQuantizationType, shape_last: int | None) -> torch.Tensor:
    """`packed` as uint8 rows [..., row_bytes], checked to hold whole blocks.

    Without `shape_last` the last dimension of `packed` is one row. With it (the tensor's innermost
    dimension, in elements) rows must hold exactly that many elements, and a 1-D `packed` (a flat
    byte buffer) is regrouped into rows [-1, row_bytes].
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed GGUF data must be a uint8 tensor, got {packed.dtype}")
    if packed.dim() == 0:
        raise ValueError("packed GGUF data must have at least one dimension")
    if shape_last is None:
        row_elements(qtype, packed.shape[-1])
        return packed
    bytes_per_row = row_bytes(qtype, shape_last)
    if packed.dim() == 1:
        if packed.numel() % bytes_per_row:
            raise ValueError(f"{packed.numel()} bytes are not a whole number of {qtype.name} rows "
                             f"of {shape_last} elements ({bytes_per_row} bytes each)")
        return packed.reshape(-1, bytes_per_row)
    if packed.shape[-1] != bytes_per_row:
        raise ValueError(f"{qtype.name} rows of {shape_last} elements take {bytes_per_row} bytes; "
                         f"got rows of {packed.shape[-1]} bytes")
    return packed
