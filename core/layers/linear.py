"""`QuantLinear`: a linear layer whose weight is either a float tensor or packed GGUF blocks."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mistralrs.kernels.gguf import cpu_matmul, dequantize, quant_matmul
from mistralrs.kernels.gguf.layout import as_qtype
from mistralrs.kernels.gguf.packed import QuantizedTensor


class QuantLinear(nn.Module):
    """y = x W^T (+ b). A GGUF checkpoint's quantized weight stays packed (`qweight`, uint8
    [out_features, row_bytes]) and is dequantized inside the matmul kernel; a float checkpoint
    fills `weight` as usual. On the CPU the packed weight is laid out for the CPU kernels once,
    at the first forward (`cpu_matmul.prepare`: mostly views of the same bytes)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.register_buffer("qweight", None)
        self.qtype: int | None = None
        self._cpu_weight: cpu_matmul.CpuWeight | None = None

    def load_checkpoint_tensor(self, leaf: str, value: torch.Tensor | QuantizedTensor,
                               dtype: torch.dtype) -> None:
        if leaf == "weight" and isinstance(value, QuantizedTensor):
            self.qweight, self.qtype = value.packed, value.qtype
            self.weight = None
            self._cpu_weight = None
            return
        if isinstance(value, QuantizedTensor):
            value = dequantize(value.packed, value.qtype)
        setattr(self, leaf, nn.Parameter(value.to(dtype), requires_grad=False))

    def tie_to(self, embedding: nn.Module) -> None:
        """Share the weight (float or packed) of an embedding table: tied input/output embeddings."""
        self.weight, self.qweight, self.qtype = embedding.weight, embedding.qweight, embedding.qtype
        self._cpu_weight = None

    @property
    def is_loaded(self) -> bool:
        return self.qweight is not None or not self.weight.is_meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qweight is None:
            return F.linear(x, self.weight, self.bias)
        cpu_weight = self._cpu_layout()
        if cpu_weight is None:
            y = quant_matmul(x.reshape(-1, self.in_features), self.qweight, self.qtype)
            y = y.reshape(*x.shape[:-1], self.out_features)
        else:
            y = cpu_matmul.matmul(x, cpu_weight)
        return y if self.bias is None else y + self.bias

    def _cpu_layout(self) -> cpu_matmul.CpuWeight | None:
        """The packed weight laid out for the CPU kernels, made at the first CPU forward; None on
        CUDA and for the types the CPU kernels do not take (float, IQ)."""
        if self._cpu_weight is None and not self.qweight.is_cuda:
            qtype = as_qtype(self.qtype)
            if qtype in cpu_matmul.SUPPORTED_TYPES:
                self._cpu_weight = cpu_matmul.prepare(self.qweight, qtype)
        return self._cpu_weight

    def _apply(self, fn, recurse=True):
        self._cpu_weight = None  # laid out again, from the moved `qweight`, if used on the CPU
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        kind = f"qtype={self.qtype}" if self.qweight is not None else "float"
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, {kind}"
