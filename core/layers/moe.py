"""`SparseMoE`: a mixture-of-experts feed-forward block (Mixtral's), its stacked expert weights
and its routing.

Routing is a separate function, `routing(router_logits [T, E], top_k) -> (weights float32
[T, top_k], expert ids [T, top_k])`, so that families with other rules (Phi-3.5-MoE's
sparsemixer, DeepSeek's group-limited routing, Qwen-MoE without renormalization) plug their own
into the same block.

The experts' weights are kept stacked, one `ExpertLinear` [E, out, in] per projection, float or
packed GGUF, so that they stay addressable as a group (e.g. to quantize only the experts).
Checkpoints store them one expert per tensor (Hugging Face) or all experts in one (GGUF): weight
mappers wrap either with `expert_slice`, and the stack is assembled once every expert arrived.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mistralrs.kernels import cpu
from mistralrs.kernels.gguf import dequantize
from mistralrs.kernels.gguf.layout import as_qtype
from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.kernels.moe import ACTIVATIONS, ExpertWeight, PackedExperts, fused_moe
from mistralrs.layers.linear import QuantLinear

Routing = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def softmax_topk(router_logits: torch.Tensor, top_k: int,
                 renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral's routing: softmax over all experts (in fp32), keep the top_k, and rescale their
    probabilities to sum to 1 (`renormalize`)."""
    probs = F.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def sparsemixer(router_logits: torch.Tensor, top_k: int,
                jitter_eps: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Phi-3.5-MoE's routing (SparseMixer, inference form), in fp32. Experts are picked one at a
    time, best remaining logit first; each one's weight is its softmax probability among the
    experts still in the race whose logit is within a relative 2 * `jitter_eps` of its own."""
    scores = router_logits.float()
    remaining = scores
    weights, ids = [], []
    for _ in range(top_k):
        best, best_id = remaining.max(dim=-1, keepdim=True)
        too_far = (best - scores) / scores.abs().clamp(min=best) > 2 * jitter_eps
        probs = F.softmax(remaining.masked_fill(too_far, float("-inf")), dim=-1)
        weights.append(probs.gather(-1, best_id))
        ids.append(best_id)
        remaining = remaining.scatter(-1, best_id, float("-inf"))
    return torch.cat(weights, dim=-1), torch.cat(ids, dim=-1)


def grouped_softmax_topk(router_logits: torch.Tensor, top_k: int, num_groups: int = 1,
                         topk_groups: int = 1, renormalize: bool = False,
                         scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2's routing: softmax over all experts (in fp32); with `num_groups` > 1
    ("group_limited_greedy") only the experts of the `topk_groups` groups holding the best
    scores compete for the top_k. Weights: the top_k probabilities, rescaled to sum to 1 if
    `renormalize`, times `scaling_factor`."""
    scores = F.softmax(router_logits.float(), dim=-1)
    ids = _topk_in_best_groups(scores, top_k, num_groups, topk_groups, group_best=1)
    return _routing_weights(scores, ids, renormalize, scaling_factor), ids


def grouped_sigmoid_topk(router_logits: torch.Tensor, top_k: int,
                         correction_bias: torch.Tensor | None = None, num_groups: int = 1,
                         topk_groups: int = 1, renormalize: bool = True,
                         scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's routing ("noaux_tc"): sigmoid scores (in fp32); experts are chosen by score
    + `correction_bias` (its load-balancing bias), among the `topk_groups` groups whose two best
    biased scores sum highest. Weights: the chosen experts' unbiased scores, rescaled to sum to
    1 if `renormalize`, times `scaling_factor`."""
    scores = torch.sigmoid(router_logits.float())
    choice = scores if correction_bias is None else scores + correction_bias.float()
    ids = _topk_in_best_groups(choice, top_k, num_groups, topk_groups, group_best=2)
    return _routing_weights(scores, ids, renormalize, scaling_factor), ids


def _topk_in_best_groups(scores: torch.Tensor, top_k: int, num_groups: int, topk_groups: int,
                         group_best: int) -> torch.Tensor:
    """Ids of the top_k scores [T, E] among the experts of the `topk_groups` groups (runs of
    E / num_groups consecutive experts) whose `group_best` best scores sum highest."""
    if num_groups > 1:
        grouped = scores.view(scores.shape[0], num_groups, -1)
        group_scores = grouped.topk(min(group_best, grouped.shape[-1]), dim=-1).values.sum(-1)
        best_groups = group_scores.topk(topk_groups, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        scores = grouped.masked_fill(~keep[..., None], float("-inf")).view_as(scores)
    return scores.topk(top_k, dim=-1).indices


def _routing_weights(scores: torch.Tensor, ids: torch.Tensor, renormalize: bool,
                     scaling_factor: float) -> torch.Tensor:
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling_factor


class BiasedSigmoidRouting(nn.Module):
    """`grouped_sigmoid_topk` as a `SparseMoE` routing that owns its `e_score_correction_bias`
    [E], a checkpoint weight. The bias stays fp32 whatever the model's dtype: it only decides
    which experts run, and bf16 would blur those decisions."""

    def __init__(self, num_experts: int, num_groups: int = 1, topk_groups: int = 1,
                 renormalize: bool = True, scaling_factor: float = 1.0):
        super().__init__()
        self.e_score_correction_bias = nn.Parameter(torch.empty(num_experts), requires_grad=False)
        self.options = dict(num_groups=num_groups, topk_groups=topk_groups,
                            renormalize=renormalize, scaling_factor=scaling_factor)

    def load_checkpoint_tensor(self, leaf: str, value: torch.Tensor, dtype: torch.dtype) -> None:
        setattr(self, leaf, nn.Parameter(value.float(), requires_grad=False))

    def forward(self, router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return grouped_sigmoid_topk(router_logits, top_k, self.e_score_correction_bias,
                                    **self.options)


@dataclass(frozen=True)
class ExpertSlice:
    """Checkpoint weights of the experts first .. first + count - 1 of a stacked
    [num_experts, out, in] expert weight: float [count, out, in] (or [out, in] for one expert),
    or a packed `QuantizedTensor` of count * out rows."""

    tensor: torch.Tensor | QuantizedTensor
    first: int
    count: int
    num_experts: int

    @property
    def rows_per_expert(self) -> int:
        return math.prod(self.tensor.shape[:-1]) // self.count

    @property
    def shape(self) -> torch.Size:
        """The stacked weight's shape, which the loader checks against the parameter."""
        return torch.Size((self.num_experts, self.rows_per_expert, self.tensor.shape[-1]))


def expert_slice(first: int, count: int, num_experts: int):
    """A weight-mapper transform: the tensor holds experts first .. first + count - 1."""
    return lambda tensor: ExpertSlice(tensor, first, count, num_experts)


class ExpertLinear(nn.Module):
    """One projection of every expert, stacked: `weight` float [E, out, in], or packed GGUF
    blocks (`qweight` uint8 [E, out, row_bytes] and `qtype`) when every expert came packed in
    one type."""

    def __init__(self, num_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.num_experts = num_experts
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features),
                                   requires_grad=False)
        self.register_buffer("qweight", None)
        self.qtype: int | None = None
        self._arrived: list[ExpertSlice] = []
        self._native: tuple | None = None
        self._native_from: torch.Tensor | None = None

    def load_checkpoint_tensor(self, leaf: str, value: ExpertSlice, dtype: torch.dtype) -> None:
        if not isinstance(value, ExpertSlice):
            raise TypeError("expert weights load through `expert_slice`; "
                            f"got {type(value).__name__}")
        self._arrived.append(value)
        if sum(part.count for part in self._arrived) < self.num_experts:
            return
        parts, self._arrived = sorted(self._arrived, key=lambda part: part.first), []
        qtypes = {getattr(part.tensor, "qtype", None) for part in parts}
        if len(qtypes) == 1 and None not in qtypes:
            packed = _concat([part.tensor.packed for part in parts])
            self.qweight = packed.reshape(self.num_experts, self.out_features, -1)
            self.qtype = qtypes.pop()
            self.weight = None
            self._repack()
            return
        floats = [dequantize(part.tensor.packed, part.tensor.qtype)
                  if isinstance(part.tensor, QuantizedTensor) else part.tensor for part in parts]
        stacked = _concat([t.to(dtype).reshape(-1, self.out_features, self.in_features)
                           for t in floats])
        self.weight = nn.Parameter(stacked, requires_grad=False)

    @property
    def is_loaded(self) -> bool:
        return self.qweight is not None or not self.weight.is_meta

    def _repack(self) -> None:
        """Lay every expert out for the CPU kernels, once per `qweight` (as `QuantLinear`)."""
        if self.qweight is self._native_from:
            return
        self._native_from, self._native = self.qweight, None
        if self.qweight is not None:
            experts = [cpu.repack(expert, as_qtype(self.qtype)) for expert in self.qweight]
            if all(expert is not None for expert in experts):
                self._native = tuple(cpu.PackedLinears([expert]) for expert in experts)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._repack()
        return result

    @property
    def stacked(self) -> ExpertWeight:
        """The weight as `mistralrs.kernels.moe.fused_moe` takes it."""
        if self.qweight is None:
            return self.weight
        return PackedExperts(self.qweight, self.qtype, self._native)

    def extra_repr(self) -> str:
        kind = f"qtype={self.qtype}" if self.qweight is not None else "float"
        return (f"experts={self.num_experts}, in={self.in_features}, out={self.out_features}, "
                f"{kind}")


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat, but a single tensor (all experts in one GGUF tensor) stays the file's view."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class Experts(nn.Module):
    """The gated MLPs of all experts: down(act(gate(x)) * up(x)), each projection stacked."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = ExpertLinear(num_experts, hidden_size, intermediate_size)
        self.up_proj = ExpertLinear(num_experts, hidden_size, intermediate_size)
        self.down_proj = ExpertLinear(num_experts, intermediate_size, hidden_size)


class SparseMoE(nn.Module):
    """Routes each token to `top_k` of `num_experts` gated MLPs and sums their outputs weighted
    by the router (`gate`, a linear layer to one logit per expert)."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 act: str = "silu", routing: Routing = softmax_topk):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"top_k={top_k} experts per token cannot be picked from {num_experts}")
        if act not in ACTIVATIONS:
            raise NotImplementedError(f"activation {act!r} is not supported in MoE experts; "
                                      f"known: {', '.join(ACTIVATIONS)}")
        self.gate = QuantLinear(hidden_size, num_experts)
        self.experts = Experts(num_experts, hidden_size, intermediate_size)
        self.top_k = top_k
        self.act = act
        self.routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.routing(self.gate(x), self.top_k)
        e = self.experts
        return fused_moe(x, e.gate_proj.stacked, e.up_proj.stacked, e.down_proj.stacked,
                         weights, ids, self.act)
