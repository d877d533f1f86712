"""What every GGUF block type provides: a torch reference and a Triton kernel with one signature.

Both take the packed blocks of a tensor as a `uint8` tensor of shape `[n_blocks, bytes_per_block]`
and return `float32` values of shape `[n_blocks, elements_per_block]`, in the order gguf-py's
`gguf.quants.dequantize` returns them. Block sizes come from `gguf.constants.GGML_QUANT_SIZES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

BlockFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Dequantizer:
    reference: BlockFn
    triton: BlockFn
