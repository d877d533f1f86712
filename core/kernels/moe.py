"""Mixture-of-experts feed-forward over routed tokens: the public entry point, dispatching by
device and weight kind.

Token t is routed to the experts topk_ids[t, j] with weights topk_weights[t, j] (j < top_k):

    out[t] = sum_j topk_weights[t, j] * down_e(act(gate_e(x[t])) * up_e(x[t])),  e = topk_ids[t, j]

The experts' weights are stacked, one tensor per projection: gate and up [E, I, H], down
[E, H, I]; each is a float tensor or a `PackedExperts` (GGUF blocks kept packed, each projection
in its own type). Routing (which experts, with what weights) is the caller's: see
`mistralrs.layers.moe`.

Implementations with this signature: `moe_triton` (CUDA with float weights: tokens grouped by
expert, then grouped GEMMs), `moe_cpu` (everywhere else and for packed weights: tokens gathered
per expert, one matmul per active expert) and `moe_reference` (the oracle of the tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mistralrs.kernels import moe_cpu, moe_triton
from mistralrs.kernels.gguf.layout import row_elements

ACTIVATIONS = tuple(moe_cpu.ACTIVATIONS)


@dataclass(frozen=True)
class PackedExperts:
    """Stacked expert weights kept in packed GGUF blocks: uint8 [E, out, row_bytes] of `qtype`;
    `native`, one `cpu.PackedLinears` per expert, where the CPU kernels were made ready for them
    (at load), else the experts run the reference on the CPU."""

    packed: torch.Tensor
    qtype: int
    native: tuple | None = None

    @property
    def shape(self) -> torch.Size:
        """The logical shape [E, out, in]."""
        return torch.Size((*self.packed.shape[:2], row_elements(self.qtype, self.packed.shape[2])))


ExpertWeight = torch.Tensor | PackedExperts


def fused_moe(x: torch.Tensor, w_gate: ExpertWeight, w_up: ExpertWeight, w_down: ExpertWeight,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              activation: str = "silu") -> torch.Tensor:
    """x [T, H] -> [T, H] in x's dtype; topk_weights float [T, top_k], topk_ids int [T, top_k]
    with values in [0, E); `activation` one of `ACTIVATIONS`."""
    _check(x, w_gate, w_up, w_down, topk_weights, topk_ids, activation)
    weights = (w_gate, w_up, w_down)
    if x.is_cuda and all(isinstance(w, torch.Tensor) for w in weights):
        return moe_triton.fused_moe(x, *weights, topk_weights, topk_ids, activation)
    return moe_cpu.fused_moe(x, *weights, topk_weights, topk_ids, activation)


def _check(x: torch.Tensor, w_gate: ExpertWeight, w_up: ExpertWeight, w_down: ExpertWeight,
           topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str) -> None:
    assert activation in ACTIVATIONS, (
        f"activation {activation!r} is not supported by the MoE kernels; known: {ACTIVATIONS}")
    assert x.dim() == 2, f"x must be [T, H]; got {tuple(x.shape)}"
    tokens, hidden = x.shape
    num_experts, intermediate = w_gate.shape[0], w_gate.shape[1]
    assert tuple(w_gate.shape) == (num_experts, intermediate, hidden) == tuple(w_up.shape), (
        f"gate {tuple(w_gate.shape)} and up {tuple(w_up.shape)} must both be "
        f"[E, I, H={hidden}]")
    assert tuple(w_down.shape) == (num_experts, hidden, intermediate), (
        f"down must be [E={num_experts}, H={hidden}, I={intermediate}]; got {tuple(w_down.shape)}")
    assert topk_ids.dim() == 2 and topk_ids.shape[0] == tokens, (
        f"topk_ids must be [T={tokens}, top_k]; got {tuple(topk_ids.shape)}")
    assert topk_weights.shape == topk_ids.shape, (
        f"topk_weights {tuple(topk_weights.shape)} must match topk_ids {tuple(topk_ids.shape)}")
    assert not topk_ids.is_floating_point(), f"topk_ids must be integers; got {topk_ids.dtype}"
