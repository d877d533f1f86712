"""Checkpoint names of Mixtral-style mixture-of-experts blocks -> `mistralrs.layers.SparseMoE`
parameters (`<layer>.mlp.gate`, `<layer>.mlp.experts.{gate,up,down}_proj`)."""
from __future__ import annotations

import re

from mistralrs.layers.moe import expert_slice
from mistralrs.plugins.architecture import MappedTensor

# Hugging Face: <layer>.block_sparse_moe.gate.weight, <layer>.block_sparse_moe.experts.E.w1.weight
_HF_MOE = re.compile(r"(.+)\.block_sparse_moe\.(gate|experts\.(\d+)\.(w[123]))\.weight$")
_HF_PROJECTIONS = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}

GGUF_MOE_NAMES = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
"""llama.cpp's per-layer MoE tensor stems, for `llama_style_name(name, per_layer=...)`."""


def hf_moe_tensor(name: str, num_experts: int) -> list[MappedTensor] | None:
    """Where a Hugging Face Mixtral-style MoE tensor goes (one expert's slice of the stacked
    expert weights); None for any other tensor."""
    match = _HF_MOE.match(name)
    if match is None:
        return None
    layer, _, expert, projection = match.groups()
    if expert is None:
        return [MappedTensor(f"{layer}.mlp.gate.weight")]
    target = f"{layer}.mlp.experts.{_HF_PROJECTIONS[projection]}.weight"
    return [MappedTensor(target, expert_slice(int(expert), 1, num_experts))]


def all_experts(num_experts: int):
    """The transform for a GGUF `ffn_*_exps` tensor: every expert, stacked."""
    return expert_slice(0, num_experts, num_experts)
