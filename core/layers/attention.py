"""`Attention`: scaled dot-product attention over the paged KV cache."""
from __future__ import annotations

import torch
from torch import nn

from mistralrs.kernels import attention as kernels
from mistralrs.layers.batch import Batch


class Attention(nn.Module):
    """Writes this step's keys and values into the layer's cache blocks, then attends each new
    query to its sequence's cached context (causal, optionally within a sliding window and with
    logit soft-capping). Projections and rotary live in the plugin's attention block.

    `values_in_keys`: each token's value is the first `v_head_dim` features of its key (as in
    multi-head latent attention, where one latent vector serves as both), so the engine makes
    the value cache a view into the key cache instead of a second copy."""

    def __init__(self, layer_index: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 scale: float, sliding_window: int | None = None, softcap: float | None = None,
                 v_head_dim: int | None = None, values_in_keys: bool = False):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} kv heads evenly")
        self.layer_index = layer_index
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.v_head_dim = v_head_dim or head_dim
        if values_in_keys and self.v_head_dim > head_dim:
            raise ValueError(f"values of {self.v_head_dim} features cannot be read from keys of "
                             f"{head_dim}")
        self.values_in_keys = values_in_keys
        self.scale = scale
        self.sliding_window = sliding_window
        self.softcap = softcap

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: Batch) -> torch.Tensor:
        """q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv] -> [T, Hq * Dv]."""
        k_cache, v_cache = batch.kv_caches[self.layer_index]
        implementation = kernels.implementation(q)
        implementation.store_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        options = dict(scale=self.scale, sliding_window=self.sliding_window, softcap=self.softcap)
        if batch.is_decode:
            out = implementation.paged_decode_attention(q, k_cache, v_cache, batch.context_lens,
                                                        batch.block_tables, **options)
        else:
            out = implementation.paged_attention(q, k_cache, v_cache, batch.cu_seqlens_q,
                                                 batch.context_lens, batch.block_tables,
                                                 max_q_len=batch.max_q_len, **options)
        return out.reshape(q.shape[0], self.num_heads * self.v_head_dim)
