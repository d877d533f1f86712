"""Normalization layers."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mistralrs.kernels.cpu import ops as cpu_ops


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in fp32. `unit_offset=True` scales by (1 + w), as Gemma does."""

    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x), plus `residual` when given: then the sum is written into `residual` on the
        CPU (one native call), so the caller must own it."""
        if cpu_ops.usable(x, self.weight) and (residual is None or (
                cpu_ops.usable(residual) and residual.is_contiguous()
                and residual.shape == x.shape)):
            out = cpu_ops.rms_norm(x, self.weight, self.eps, self.unit_offset, add_to=residual)
            if out is not None:
                return out
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight.float() + 1.0 if self.unit_offset else self.weight.float()
        normed = (x32 * weight).to(x.dtype)
        return normed if residual is None else residual + normed


class LayerNorm(nn.Module):
    """(x - mean) / std * w (+ b), computed in fp32 (Starcoder2, Phi-2)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(dim), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.weight.shape, self.weight.float(), bias,
                            self.eps).to(x.dtype)
