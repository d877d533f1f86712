"""`QuantizedTensor`: a 2-D weight kept in its packed GGUF blocks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class QuantizedTensor:
    """Rows of packed GGUF blocks: `packed` is uint8 [rows, row_bytes], the logical tensor is
    float [rows, cols] (for a linear weight: [out_features, in_features]). Rows are independent,
    so row selection and permutation work on the packed bytes directly.

    `release_rows(first, last)`, set when `packed` is a view of a memory-mapped file, drops the
    file pages of those rows from the process's memory (they are read back from the file if
    touched again): for a layer that has copied the weight into a layout of its own."""

    packed: torch.Tensor
    qtype: int
    cols: int
    release_rows: Callable[[int, int], None] | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.packed.shape[0], self.cols))

    def rows(self, index: torch.Tensor | slice) -> "QuantizedTensor":
        if isinstance(index, torch.Tensor) and index.dim() == 1 and index.dtype is torch.int64:
            # 2-3x faster than `packed[index]` (SmolLM2's 60 q/k permutations at load: ~6 ms)
            return QuantizedTensor(self.packed.index_select(0, index), self.qtype, self.cols)
        return QuantizedTensor(self.packed[index], self.qtype, self.cols)

    def to(self, device: torch.device | str) -> "QuantizedTensor":
        return QuantizedTensor(self.packed.to(device), self.qtype, self.cols)
