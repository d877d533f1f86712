"""Triton dequantization of GGUF blocks: one kernel for every type, specialised by its decoder.

The kernel is launched with FMA contraction off, so `d * q - m` rounds twice exactly as the torch
reference and gguf-py do: its output is bit-identical to theirs, compiled or interpreted.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from .common import BlockFn
from .triton_decode import DECODERS

ELEMENTS_PER_PROGRAM = 1024


@triton.jit
def _dequantize_kernel(packed_ptr, out_ptr, n_elements, DECODE: tl.constexpr,
                       BLOCK_ELEMENTS: tl.constexpr, BLOCK_BYTES: tl.constexpr, TILE: tl.constexpr):
    """Decode a flat run of TILE output elements of a contiguous [n_blocks, BLOCK_BYTES] array."""
    element = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    mask = element < n_elements
    block = packed_ptr + (element // BLOCK_ELEMENTS) * BLOCK_BYTES
    values = DECODE(block, (element % BLOCK_ELEMENTS).to(tl.int32), mask)
    tl.store(out_ptr + element, values, mask=mask)


def dequantize_blocks(blocks: torch.Tensor, qtype: Q) -> torch.Tensor:
    """uint8 [n_blocks, bytes_per_block] -> float32 [n_blocks, elements_per_block]."""
    elements, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = blocks.contiguous()
    out = torch.empty(blocks.shape[0], elements, dtype=torch.float32, device=blocks.device)
    if out.numel() > 0:
        grid = (triton.cdiv(out.numel(), ELEMENTS_PER_PROGRAM),)
        _dequantize_kernel[grid](blocks, out, out.numel(), DECODE=DECODERS[qtype],
                                 BLOCK_ELEMENTS=elements, BLOCK_BYTES=block_bytes,
                                 TILE=ELEMENTS_PER_PROGRAM, enable_fp_fusion=False)
    return out


BLOCK_DEQUANTIZERS: dict[Q, BlockFn] = {
    qtype: functools.partial(dequantize_blocks, qtype=qtype) for qtype in DECODERS
}
