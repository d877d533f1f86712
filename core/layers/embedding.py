"""`Embedding`: a token embedding table, float or kept in packed GGUF blocks."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mistralrs.kernels import cpu
from mistralrs.kernels.gguf import dequantize
from mistralrs.kernels.gguf.layout import as_qtype
from mistralrs.kernels.gguf.packed import QuantizedTensor


class Embedding(nn.Module):
    """Looks up token rows. A packed table dequantizes only the rows it looks up, so a large
    quantized vocabulary never exists as floats."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)
        self.register_buffer("qweight", None)
        self.qtype: int | None = None
        self.dtype = torch.float32
        self.release_rows = None
        """A memory-mapped table's page release (see `QuantizedTensor`), for a tied output
        layer that copies the table."""
        self.repacked: cpu.RepackedWeight | None = None
        """The table as the native kernels' records, when a tied output layer made them: rows
        are then read from there, not from the file (whose pages each lookup would map back in,
        64 KiB around the row)."""

    def load_checkpoint_tensor(self, leaf: str, value: torch.Tensor | QuantizedTensor,
                               dtype: torch.dtype) -> None:
        self.dtype = dtype
        if isinstance(value, QuantizedTensor):
            self.qweight, self.qtype = value.packed, value.qtype
            self.release_rows = value.release_rows
            self.weight = None
        else:
            self.weight = nn.Parameter(value.to(dtype), requires_grad=False)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        if self.qweight is not None and not self.qweight.is_cpu:
            self.repacked = None  # the output layer repacks for the CPU only
        return result

    @property
    def is_loaded(self) -> bool:
        return self.qweight is not None or not self.weight.is_meta

    def forward(self, input_ids: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """The rows of `input_ids`, times `scale` when given (in the model dtype, as Gemma's
        embedding normalizer)."""
        if self.qweight is not None and self.dtype is torch.float32 and input_ids.is_cpu:
            factor = 1.0 if scale is None else scale
            rows = (cpu.dequantize_rows(self.qweight, as_qtype(self.qtype), input_ids, factor)
                    if self.repacked is None
                    else cpu.dequantize_repacked(self.repacked, input_ids, factor))
            if rows is not None:
                return rows.view(*input_ids.shape, self.embedding_dim)
        if self.qweight is None:
            hidden = F.embedding(input_ids, self.weight)
        else:
            rows = dequantize(self.qweight[input_ids.reshape(-1)], self.qtype)
            hidden = rows.to(self.dtype).reshape(*input_ids.shape, self.embedding_dim)
        if scale is not None:
            hidden = hidden * torch.tensor(scale, dtype=hidden.dtype)
        return hidden
