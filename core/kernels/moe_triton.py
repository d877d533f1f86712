"""Mixture-of-experts Triton kernels: tokens grouped by expert, then grouped GEMMs.

Each (token, slot) pair of the routing is one row. The rows are sorted by expert and each
expert's run padded to a multiple of BLOCK_M (`group_by_expert`), so a block of BLOCK_M sorted
rows belongs to one expert. One kernel, launched twice, multiplies a block of rows by that
expert's weight tile by tile (`tl.dot`, fp32 accumulation):
1. gate/up: rows of x (row r reads token r // top_k) times the gate and up weights at once,
   written as act(gate) * up, [T * top_k, I];
2. down: those rows times the down weight, scaled by the routing weight, [T * top_k, H].
The top_k rows of each token are then summed. Padding rows and blocks past the last expert's
run do nothing. The contract is in `mistralrs.kernels.moe`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_N = 64


@triton.jit
def _activate(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == "silu":
        y = x * tl.sigmoid(x)
    elif ACTIVATION == "gelu":
        y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    else:  # gelu_pytorch_tanh, with 0.5 * (1 + tanh(u)) = sigmoid(2u)
        y = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
    return y


@triton.jit
def _expert_gemm_kernel(a_ptr, w_ptr, w_up_ptr, out_ptr, sorted_rows_ptr, block_experts_ptr,
                        routing_weights_ptr, num_rows, a_rows_per_token, N, K,
                        stride_a, stride_we, stride_wn, stride_out,
                        GATED: tl.constexpr, ACTIVATION: tl.constexpr,
                        MUL_ROUTING_WEIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[r, n] = (A[r // a_rows_per_token] @ W[e].T)[n] for the sorted rows r of one block,
    e its expert; GATED: act(A @ W[e].T) * (A @ W_up[e].T). W [E, N, K], contiguous in K."""
    expert = tl.load(block_experts_ptr + tl.program_id(0))
    if expert < 0:
        return
    rows = tl.load(sorted_rows_ptr + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = rows < num_rows
    a_rows = (rows // a_rows_per_token).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_offsets = expert.to(tl.int64) * stride_we + n[None, :].to(tl.int64) * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + a_rows[:, None] * stride_a + k[None, :],
                    mask=valid[:, None] & (k < K)[None, :], other=0.0)
        w_mask = (k < K)[:, None] & (n < N)[None, :]
        w = tl.load(w_ptr + w_offsets + k[:, None], mask=w_mask, other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        if GATED:
            w_up = tl.load(w_up_ptr + w_offsets + k[:, None], mask=w_mask, other=0.0)
            acc_up = tl.dot(a, w_up, acc_up, input_precision=DOT_PRECISION)
    if GATED:
        acc = _activate(acc, ACTIVATION) * acc_up
    if MUL_ROUTING_WEIGHT:
        acc = acc * tl.load(routing_weights_ptr + rows, mask=valid, other=0.0)[:, None]
    out = out_ptr + rows[:, None].to(tl.int64) * stride_out + n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & (n < N)[None, :])


def group_by_expert(topk_ids: torch.Tensor, num_experts: int,
                    block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing rows (t * top_k + j) sorted by expert, each expert's run padded with the
    sentinel T * top_k to a multiple of `block_m`: (sorted_rows int32 [num_blocks * block_m],
    block_experts int32 [num_blocks], -1 for blocks past the last run). Sized by the worst case
    so that nothing is read back from the device."""
    flat = topk_ids.reshape(-1)
    num_rows = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    padded_ends = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)
    experts = flat[order]
    device = flat.device
    rank_in_expert = torch.arange(num_rows, device=device) - (counts.cumsum(0) - counts)[experts]
    num_blocks = triton.cdiv(num_rows + num_experts * (block_m - 1), block_m)
    sorted_rows = torch.full((num_blocks * block_m,), num_rows, dtype=torch.int32, device=device)
    sorted_rows[(padded_ends - padded)[experts] + rank_in_expert] = order.to(torch.int32)
    block_starts = torch.arange(num_blocks, device=device) * block_m
    block_experts = torch.searchsorted(padded_ends, block_starts, right=True)
    block_experts = torch.where(block_experts < num_experts, block_experts, -1)
    return sorted_rows, block_experts.to(torch.int32)


def _block_m(num_rows: int, num_experts: int) -> int:
    """Rows per block: about the rows an expert gets, between 16 (the smallest `tl.dot`) and 64."""
    return min(64, max(16, triton.next_power_of_2(triton.cdiv(num_rows, num_experts))))


def fused_moe(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              activation: str = "silu") -> torch.Tensor:
    x, w_gate, w_up, w_down = (t.contiguous() for t in (x, w_gate, w_up, w_down))
    (num_tokens, hidden), (num_experts, intermediate, _) = x.shape, w_gate.shape
    top_k = topk_ids.shape[1]
    num_rows = num_tokens * top_k
    block_m = _block_m(num_rows, num_experts)
    sorted_rows, block_experts = group_by_expert(topk_ids, num_experts, block_m)
    weights = topk_weights.to(torch.float32).contiguous()
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    common = dict(DOT_PRECISION=precision, BLOCK_M=block_m, BLOCK_N=_BLOCK_N,
                  BLOCK_K=32 if x.dtype == torch.float32 else 64)

    gated = torch.empty(num_rows, intermediate, dtype=x.dtype, device=x.device)
    grid = (block_experts.shape[0], triton.cdiv(intermediate, _BLOCK_N))
    _expert_gemm_kernel[grid](
        x, w_gate, w_up, gated, sorted_rows, block_experts, weights, num_rows, top_k,
        intermediate, hidden, x.stride(0), w_gate.stride(0), w_gate.stride(1), gated.stride(0),
        GATED=True, ACTIVATION=activation, MUL_ROUTING_WEIGHT=False, **common)

    per_row = torch.empty(num_rows, hidden, dtype=torch.float32, device=x.device)
    grid = (block_experts.shape[0], triton.cdiv(hidden, _BLOCK_N))
    _expert_gemm_kernel[grid](
        gated, w_down, w_down, per_row, sorted_rows, block_experts, weights, num_rows, 1,
        hidden, intermediate, gated.stride(0), w_down.stride(0), w_down.stride(1),
        per_row.stride(0),
        GATED=False, ACTIVATION=activation, MUL_ROUTING_WEIGHT=True, **common)
    return per_row.view(num_tokens, top_k, hidden).sum(1).to(x.dtype)
