"""`QuantLinear`: a linear layer whose weight is either a float tensor or packed GGUF blocks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mistralrs.kernels import cpu
from mistralrs.kernels.gguf import dequantize, quant_matmul, quant_matmul_reference
from mistralrs.kernels.gguf.layout import as_qtype
from mistralrs.kernels.gguf.packed import QuantizedTensor


class QuantLinear(nn.Module):
    """y = x W^T (+ b). A GGUF checkpoint's quantized weight stays packed (`qweight`, uint8
    [out_features, row_bytes]) and is dequantized inside the matmul kernel; a float checkpoint
    fills `weight` as usual. On the CPU the packed weight is repacked once, as it is loaded, for
    the native kernels (`cpu.repack`), which then compute every forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.register_buffer("qweight", None)
        self.qtype: int | None = None
        self.repacked: cpu.RepackedWeight | None = None
        """The CPU kernels' copy of `qweight` (None on other devices and for the types, float
        and IQ, that they do not take)."""
        self._repacked_from: torch.Tensor | None = None
        self._native: cpu.PackedLinears | None = None
        self._release_rows = None

    def load_checkpoint_tensor(self, leaf: str, value: torch.Tensor | QuantizedTensor,
                               dtype: torch.dtype) -> None:
        if leaf == "weight" and isinstance(value, QuantizedTensor):
            self.qweight, self.qtype = value.packed, value.qtype
            self.weight = None
            self._release_rows = value.release_rows
            self._repack()
            return
        if isinstance(value, QuantizedTensor):
            value = dequantize(value.packed, value.qtype)
        setattr(self, leaf, nn.Parameter(value.to(dtype), requires_grad=False))

    def tie_to(self, embedding: nn.Module) -> None:
        """Share the weight (float or packed) of an embedding table: tied input/output embeddings."""
        self.weight, self.qweight, self.qtype = embedding.weight, embedding.qweight, embedding.qtype
        self._release_rows = getattr(embedding, "release_rows", None)
        self._repack()

    def _repack(self) -> None:
        """Make `repacked` for the current `qweight` (once per tensor: moving the layer to the
        device it is already on keeps it)."""
        if self.qweight is self._repacked_from:
            return
        self._repacked_from, self._native = self.qweight, None
        self.repacked = None if self.qweight is None else cpu.repack(
            self.qweight, as_qtype(self.qtype), self._release_rows)
        self._release_rows = None  # the file's pages are released once, by the first repack

    @property
    def is_loaded(self) -> bool:
        return self.qweight is not None or not self.weight.is_meta

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x W^T (+ b), plus `residual` when given. The sum may be written into `residual` (on
        the CPU the matmul adds its products straight into it): the caller must own it."""
        if self.repacked is not None:
            if self._native is None:
                self._native = cpu.PackedLinears([self.repacked])
            if (residual is not None and self.bias is None and residual.dtype is torch.float32
                    and residual.is_contiguous()):
                return self._native(x, add_to=residual)
            y = self._native(x)
            if x.dtype is not torch.float32:
                y = y.to(x.dtype)
        elif self.qweight is None:
            y = F.linear(x, self.weight)
        else:  # CUDA kernels; on the CPU, the types the native kernels do not take (or none)
            matmul = quant_matmul if self.qweight.is_cuda else quant_matmul_reference
            y = matmul(x.reshape(-1, self.in_features), self.qweight, self.qtype)
            y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y if residual is None else residual + y

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._repack()
        return result

    def extra_repr(self) -> str:
        kind = f"qtype={self.qtype}" if self.qweight is not None else "float"
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, {kind}"


class FusedProjection:
    """Linear layers that read the same input (q, k, v; gate and up), applied together: on the
    CPU one native call computes all of them when all are repacked, so the input is quantized
    once and the threads split every output row; otherwise each layer runs on its own. Returns
    the outputs in order (on the native path, column views of one buffer)."""

    def __init__(self, linears: Sequence[QuantLinear]):
        self.linears = list(linears)
        self._native: cpu.PackedLinears | None = None
        self._native_for: list[cpu.RepackedWeight | None] = []

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        repacked = [linear.repacked for linear in self.linears]
        if None in repacked:
            return [linear(x) for linear in self.linears]
        if repacked != self._native_for:
            self._native, self._native_for = cpu.PackedLinears(repacked), repacked
        outputs = self._native(x).to(x.dtype).split([w.out_features for w in repacked], dim=-1)
        return [y if linear.bias is None else y + linear.bias
                for y, linear in zip(outputs, self.linears)]
