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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_ops.usable(x, self.weight):
            out = cpu_ops.rms_norm(x, self.weight, self.eps, self.unit_offset)
            if out is not None:
                return out
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight.float() + 1.0 if self.unit_offset else self.weight.float()
        return (x32 * weight).to(x.dtype)

    def add_and_norm(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, this norm of it). On the CPU one call, which writes the sum into x: the
        caller must own x (a decoder layer's residual stream)."""
        if cpu_ops.usable(x, delta, self.weight) and x.is_contiguous() and delta.is_contiguous():
            out = cpu_ops.rms_norm(x, self.weight, self.eps, self.unit_offset, residual=delta)
            if out is not None:
                return x, out
        x = x + delta
        return x, self(x)


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
