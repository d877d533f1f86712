"""Logits at every position of a token sequence, computed through the same paged KV cache and
kernels as generation: used for teacher-forced evaluation and for tests against references."""
from __future__ import annotations

import torch

from mistralrs.engine.model_runner import ModelRunner
from mistralrs.loading.model_loader import LoadedModel
from mistralrs.scheduler import BlockManager, ScheduledSequence, Sequence


def score(loaded: LoadedModel, token_ids: list[int], chunks: list[int] | None = None,
          block_size: int = 16, kv_cache_dtype: str = "auto") -> torch.Tensor:
    """float32 [len(token_ids), vocab]: row i predicts token i+1. `chunks` splits the tokens into
    successive forward passes (e.g. [prompt_len, 1, 1, ...] scores cached decode steps); by
    default all tokens go through one prefill. `kv_cache_dtype` as `Engine` takes it."""
    chunks = chunks or [len(token_ids)]
    if sum(chunks) != len(token_ids):
        raise ValueError("chunks must add up to the number of tokens")
    num_blocks = -(-len(token_ids) // block_size)
    runner = ModelRunner(loaded.model, num_blocks, block_size, loaded.dtype, loaded.device,
                         kv_cache_dtype=kv_cache_dtype)
    blocks = BlockManager(num_blocks, block_size)
    seq = Sequence(token_ids)
    rows = []
    for n in chunks:
        blocks.grow(seq, seq.num_computed + n)
        rows.append(runner.run([ScheduledSequence(seq, n)], all_logits=True))
        seq.num_computed += n
    return torch.cat(rows)
