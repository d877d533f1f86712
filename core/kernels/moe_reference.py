"""The plain torch oracle of `mistralrs.kernels.moe`: every (token, slot) pair of the routing
runs its expert's MLP on its own, packed weights dequantized first."""
from __future__ import annotations

import torch

from mistralrs.kernels.gguf import dequantize_reference
from mistralrs.kernels.moe_cpu import ACTIVATIONS


def _expert_weight(weight, expert: int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        return weight[expert]
    return dequantize_reference(weight.packed[expert], weight.qtype).to(dtype)


def fused_moe(x: torch.Tensor, w_gate, w_up, w_down, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    act = ACTIVATIONS[activation]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for token in range(x.shape[0]):
        for slot in range(topk_ids.shape[1]):
            expert = int(topk_ids[token, slot])
            gate, up, down = (_expert_weight(w, expert, x.dtype) for w in (w_gate, w_up, w_down))
            hidden = act(gate @ x[token]) * (up @ x[token])
            out[token] += topk_weights[token, slot].float() * (down @ hidden).float()
    return out.to(x.dtype)
