"""Mixture-of-experts in torch: the CPU path, and the path for packed GGUF expert weights.

The routing rows (token, slot) are sorted by expert so that each expert's tokens are gathered
once into one contiguous block; every expert that received tokens then runs three matmuls on its
block, and one scatter-add sums the rows back into their tokens. Packed weights run the native
CPU kernels where the layer made them ready (`PackedExperts.native`), the exact reference on
other CPUs, and `quant_matmul` (the fused Triton kernels) on CUDA. The contract is in
`mistralrs.kernels.moe`.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from mistralrs.kernels.gguf import quant_matmul, quant_matmul_reference

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def expert_matmul(x: torch.Tensor, weight, expert: int) -> torch.Tensor:
    """x @ W[expert].T for a float [E, N, K] weight or a `PackedExperts`."""
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight[expert])
    if weight.native is not None:
        return weight.native[expert](x).to(x.dtype)
    if x.is_cuda:
        return quant_matmul(x, weight.packed[expert], weight.qtype)
    return quant_matmul_reference(x, weight.packed[expert], weight.qtype)


def fused_moe(x: torch.Tensor, w_gate, w_up, w_down, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    act = ACTIVATIONS[activation]
    top_k, num_experts = topk_ids.shape[1], w_gate.shape[0]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tokens = order // top_k
    grouped = x[tokens]
    out_rows = torch.empty(flat.numel(), x.shape[1], dtype=torch.float32, device=x.device)
    start = 0
    for expert, count in enumerate(torch.bincount(flat, minlength=num_experts).tolist()):
        if count == 0:
            continue
        rows = grouped[start:start + count]
        hidden = act(expert_matmul(rows, w_gate, expert)) * expert_matmul(rows, w_up, expert)
        out_rows[start:start + count] = expert_matmul(hidden, w_down, expert)
        start += count
    out_rows *= topk_weights.reshape(-1)[order, None]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    return out.index_add_(0, tokens, out_rows).to(x.dtype)
