"""The mixture-of-experts kernels (`mistralrs.kernels.moe`) and the `SparseMoE` layer.

Oracles: transformers' `MixtralSparseMoeBlock` with the same weights, for the torch reference
and for the layer; then the reference, for the Triton kernel (interpreted here) and the CPU path.
Tiny shapes (T=7, H=32, I=48, E=4, top-2) with the last expert routed no token, so the grouped
kernel sees an empty expert, experts with one block and blocks of padding; packed GGUF weights
need whole 32-element blocks, so their tests take I=64.
"""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from gguf_writer import quantized_roundtrip
from mistralrs.kernels import moe_cpu, moe_reference, moe_triton
from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.kernels.moe import ACTIVATIONS, PackedExperts, fused_moe
from mistralrs.layers import SparseMoE, expert_slice, softmax_topk

T, H, I, E, TOP_K = 7, 32, 48, 4, 2
I_PACKED = 64


def experts(seed: int = 0, dtype: torch.dtype = torch.float32, intermediate: int = I):
    g = torch.Generator().manual_seed(seed)
    gate, up = (torch.randn(E, intermediate, H, generator=g) * H ** -0.5 for _ in range(2))
    down = torch.randn(E, H, intermediate, generator=g) * intermediate ** -0.5
    return gate.to(dtype), up.to(dtype), down.to(dtype)


def routed(tokens: int, seed: int = 1, dtype: torch.dtype = torch.float32):
    """x and its top-2 routing over the first E - 1 experts (the last one gets no token)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, H, generator=g).to(dtype)
    logits = torch.randn(tokens, E, generator=g)
    logits[:, -1] = float("-inf")
    weights, ids = softmax_topk(logits, TOP_K)
    assert E - 1 not in ids
    return x, weights, ids


@pytest.mark.parametrize("tokens, activation", [
    *((T, activation) for activation in ACTIVATIONS),
    (1, "silu"),   # a decode step
    (40, "silu"),  # 32-row blocks, an expert over two blocks
])
def test_triton_matches_reference(tokens, activation):
    x, weights, ids = routed(tokens)
    w = experts()
    out = moe_triton.fused_moe(x, *w, weights, ids, activation)
    expected = moe_reference.fused_moe(x, *w, weights, ids, activation)
    assert out.shape == (tokens, H) and out.dtype == torch.float32
    assert (out - expected).abs().max().item() < 1e-5


def test_triton_matches_reference_in_float16():
    """float16, not bfloat16: Triton's interpreter multiplies bfloat16 `tl.dot` operands as
    float32. The intermediate act(gate) * up is rounded to float16 between the two GEMMs."""
    x, weights, ids = routed(T, dtype=torch.float16)
    w = experts(dtype=torch.float16)
    out = moe_triton.fused_moe(x, *w, weights, ids)
    expected = moe_reference.fused_moe(x.float(), *(t.float() for t in w), weights, ids)
    assert out.dtype == torch.float16
    assert (out.float() - expected).abs().max().item() < 5e-3


def test_group_by_expert_gives_each_block_one_expert():
    _, _, ids = routed(T)
    sorted_rows, block_experts = moe_triton.group_by_expert(ids, E, block_m=16)
    flat = ids.reshape(-1)
    real = sorted_rows < flat.numel()
    assert sorted(sorted_rows[real].tolist()) == list(range(flat.numel()))
    for block, expert in enumerate(block_experts.tolist()):
        rows = sorted_rows[block * 16:(block + 1) * 16]
        rows = rows[rows < flat.numel()]
        assert (flat[rows.long()] == expert).all() and (expert >= 0 or len(rows) == 0)


def packed(weight: torch.Tensor, qtype: Q) -> PackedExperts:
    return PackedExperts(torch.from_numpy(quants.quantize(weight.numpy(), qtype)), int(qtype))


@pytest.mark.parametrize("tokens", [1, T])
@pytest.mark.usefixtures("reference_cpu_kernels")
def test_cpu_path_matches_reference_on_float_and_packed_weights(tokens):
    """The grouping by expert and the sums back into tokens, on the exact float32 matmuls (the
    native kernels' int8 matmuls of packed experts are checked in test_cpu_native.py)."""
    x, weights, ids = routed(tokens)
    gate, up, down = experts(intermediate=I_PACKED)
    for w in [(gate, up, down), (packed(gate, Q.Q8_0), packed(up, Q.Q4_0), packed(down, Q.Q8_0))]:
        out = moe_cpu.fused_moe(x, *w, weights, ids)
        expected = moe_reference.fused_moe(x, *w, weights, ids)
        assert (out - expected).abs().max().item() < 1e-5
    assert fused_moe(x, gate, up, down, weights, ids).equal(
        moe_cpu.fused_moe(x, gate, up, down, weights, ids))


def transformers_block(intermediate: int = I, seed: int = 0) -> MixtralSparseMoeBlock:
    config = MixtralConfig(hidden_size=H, intermediate_size=intermediate, num_local_experts=E,
                           num_experts_per_tok=TOP_K)
    block = MixtralSparseMoeBlock(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return block


def test_reference_and_routing_match_transformers_mixtral_block():
    block = transformers_block()
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = block(x[None])[0]
    weights, ids = softmax_topk(x @ block.gate.weight.T, TOP_K)
    gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    out = moe_reference.fused_moe(x, gate_up[:, :I], gate_up[:, I:], down, weights, ids)
    assert (out - expected).abs().max().item() < 1e-5


def load_layer(block: MixtralSparseMoeBlock, qtype: Q | None = None) -> SparseMoE:
    """A `SparseMoE` filled the way checkpoints fill it: the float experts one by one (Hugging
    Face), or packed and stacked (GGUF)."""
    intermediate = block.experts.intermediate_dim
    with torch.device("meta"):
        layer = SparseMoE(H, intermediate, E, TOP_K)
    layer.gate.load_checkpoint_tensor("weight", block.gate.weight.detach(), torch.float32)
    gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    projections = {"gate_proj": gate_up[:, :intermediate], "up_proj": gate_up[:, intermediate:],
                   "down_proj": down}
    for name, stacked in projections.items():
        target = getattr(layer.experts, name)
        if qtype is None:
            for e in range(E):
                target.load_checkpoint_tensor("weight", expert_slice(e, 1, E)(stacked[e]),
                                              torch.float32)
        else:
            rows = packed(stacked.contiguous(), qtype).packed.reshape(E * stacked.shape[1], -1)
            tensor = QuantizedTensor(rows, int(qtype), stacked.shape[2])
            target.load_checkpoint_tensor("weight", expert_slice(0, E, E)(tensor), torch.float32)
        assert target.is_loaded
    return layer


@pytest.mark.parametrize("qtype", [None, Q.Q8_0], ids=["float", "Q8_0"])
@pytest.mark.usefixtures("reference_cpu_kernels")
def test_sparse_moe_layer_matches_transformers(qtype):
    block = transformers_block(I_PACKED)
    layer = load_layer(block, qtype)
    if qtype is not None:  # the oracle runs the weights as gguf-py dequantizes them
        with torch.no_grad():
            for p in block.experts.parameters():
                p.copy_(quantized_roundtrip(p.numpy(), qtype))
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = block(x[None])[0]
    assert (layer(x) - expected).abs().max().item() < 1e-5
