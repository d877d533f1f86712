"""What one forward pass knows about its ragged batch of sequences.

The model runner builds a `Batch` for every step; attention layers read the paged KV cache
through it. The flat token dimension T holds, sequence after sequence, the new tokens of each
(a whole prompt, a prefill chunk, or the one token of a decode step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor
    """int64 [T]: the new tokens."""
    positions: torch.Tensor
    """int64 [T]: each token's position in its sequence."""
    cu_seqlens_q: torch.Tensor
    """int32 [B+1]: sequence b's tokens are rows cu_seqlens_q[b]:cu_seqlens_q[b+1]."""
    context_lens: torch.Tensor
    """int32 [B]: tokens of sequence b in the cache after this step (cached + new)."""
    block_tables: torch.Tensor
    """int32 [B, max_blocks]: the cache blocks of each sequence, in order."""
    slot_mapping: torch.Tensor
    """int64 [T]: the cache slot each new token's key and value are written to."""
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    """Per attention layer (by `layer_index`): key and value caches
    [num_blocks, block_size, num_kv_heads, head_dim]."""
    logits_indices: torch.Tensor
    """int64 [N]: the rows of T whose logits are wanted (usually each sequence's last token)."""
    max_q_len: int
    """The longest run of new tokens of any sequence (1 for a pure decode step)."""

    @property
    def is_decode(self) -> bool:
        return self.max_q_len == 1
