"""`SelfAttention`: the attention block of Llama-style decoders (projections, optional QK-norm,
rotary, paged attention), with the Hugging Face module names `q_proj`, `k_proj`, `v_proj`,
`o_proj`, `q_norm`, `k_norm`."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mistralrs.layers.attention import Attention
from mistralrs.layers.batch import Batch
from mistralrs.layers.linear import FusedProjection, QuantLinear
from mistralrs.layers.rotary import RotaryEmbedding


class SelfAttention(nn.Module):
    """o_proj(attn(rotary(q_norm(q_proj x)), rotary(k_norm(k_proj x)), v_proj x)).

    `attn` fixes the heads, head size, scale, sliding window and soft-capping; `qkv_bias` and
    `o_bias` are separate because some families (Qwen2) bias only the input projections;
    `qk_norm(head_dim)` builds the per-head norm of QK-norm models (Qwen3, Gemma 3)."""

    def __init__(self, hidden_size: int, attn: Attention, rotary: RotaryEmbedding,
                 qkv_bias: bool = False, o_bias: bool = False,
                 qk_norm: Callable[[int], nn.Module] | None = None):
        super().__init__()
        q_size = attn.num_heads * attn.head_dim
        self.q_proj = QuantLinear(hidden_size, q_size, qkv_bias)
        self.k_proj = QuantLinear(hidden_size, attn.num_kv_heads * attn.head_dim, qkv_bias)
        self.v_proj = QuantLinear(hidden_size, attn.num_kv_heads * attn.v_head_dim, qkv_bias)
        self.o_proj = QuantLinear(attn.num_heads * attn.v_head_dim, hidden_size, o_bias)
        self.q_norm = qk_norm(attn.head_dim) if qk_norm else None
        self.k_norm = qk_norm(attn.head_dim) if qk_norm else None
        self.rotary = rotary
        self.attn = attn
        self.qkv = FusedProjection([self.q_proj, self.k_proj, self.v_proj])

    def forward(self, x: torch.Tensor, batch: Batch,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """With `residual`, returns residual + the attention output (see `QuantLinear`)."""
        t, attn = x.shape[0], self.attn
        q, k, v = self.qkv(x)
        q = q.view(t, attn.num_heads, attn.head_dim)
        k = k.view(t, attn.num_kv_heads, attn.head_dim)
        v = v.view(t, attn.num_kv_heads, attn.v_head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q, k, batch, may_overwrite=True)
        return self.o_proj(attn(q, k, v, batch), residual)
