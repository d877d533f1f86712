"""Feed-forward blocks."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mistralrs.kernels.cpu import ops as cpu_ops
from mistralrs.layers.linear import FusedProjection, QuantLinear

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise NotImplementedError(f"activation {name!r} is not supported; known: "
                                  f"{', '.join(ACTIVATIONS)}") from None


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with `silu`, GeGLU with a gelu."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu",
                 bias: bool = False):
        super().__init__()
        self.gate_proj = QuantLinear(hidden_size, intermediate_size, bias)
        self.up_proj = QuantLinear(hidden_size, intermediate_size, bias)
        self.down_proj = QuantLinear(intermediate_size, hidden_size, bias)
        self.act = activation(act)
        self.act_name = act
        self.gate_up = FusedProjection([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """With `residual`, returns residual + the MLP output (see `QuantLinear`)."""
        gate, up = self.gate_up(x)
        if (gate.dim() == 2 and self.act_name in cpu_ops.ACTIVATIONS and cpu_ops.usable(gate, up)
                and gate.stride(0) == up.stride(0)):
            return self.down_proj(cpu_ops.gated_activation(gate, up, self.act_name), residual)
        return self.down_proj(self.act(gate) * up, residual)


class MLP(nn.Module):
    """down(act(up(x))): the plain feed-forward block (Starcoder2's c_fc/c_proj, Phi-2's
    fc1/fc2; plugins map those checkpoint names to `up_proj`/`down_proj`, which are also
    what llama.cpp's `ffn_up`/`ffn_down` map to)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False):
        super().__init__()
        self.up_proj = QuantLinear(hidden_size, intermediate_size, bias)
        self.down_proj = QuantLinear(intermediate_size, hidden_size, bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """With `residual`, returns residual + the MLP output (see `QuantLinear`)."""
        return self.down_proj(self.act(self.up_proj(x)), residual)
