"""Turns the scheduler's decisions into one forward pass over the paged KV cache."""
from __future__ import annotations

import functools
import math
import mmap

import torch
from torch import nn

from mistralrs.engine.decode_graph import DecodeGraphs
from mistralrs.engine.heap import LONG_STEP_TOKENS, release_free_memory
from mistralrs.errors import EngineOptionError
from mistralrs.kernels import kv_u8
from mistralrs.layers import Attention, Batch
from mistralrs.scheduler import ScheduledSequence


def attention_layers(model: nn.Module) -> list[Attention]:
    layers = sorted((m for m in model.modules() if isinstance(m, Attention)),
                    key=lambda m: m.layer_index)
    if [m.layer_index for m in layers] != list(range(len(layers))):
        raise ValueError("attention layers must be numbered 0..L-1 by `layer_index`")
    return layers


KV_CACHE_DTYPES = ("auto", "int8")
"""What `kv_cache_dtype` options name: "auto" (below), "int8" (`kv_u8`'s 8-bit cache)."""


def resolve_kv_cache_dtype(model: nn.Module, dtype: torch.dtype, device: torch.device,
                           requested: str = "auto") -> torch.dtype:
    """The KV cache's dtype. "auto": float16 where the native CPU kernels run the model's
    quantized matmuls (on int8 activations, as llama.cpp, whose default cache is float16 too:
    the cache and the attention's reads halve at no measurable cost), the model's dtype
    otherwise. "int8": `kv_u8`'s 8-bit cache (CPU only), half the memory of float16."""
    if requested not in KV_CACHE_DTYPES:
        raise EngineOptionError(f"the KV cache type must be one of {', '.join(KV_CACHE_DTYPES)}; "
                                f"got {requested!r}")
    if requested == "int8":
        kv_u8.check_supported(device, any(a.values_in_keys for a in attention_layers(model)))
        return kv_u8.DTYPE
    if device.type == "cpu" and dtype == torch.float32 and any(
            getattr(m, "repacked", None) is not None for m in model.modules()):
        return torch.float16
    return dtype


def kv_bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype,
                       device: torch.device = torch.device("cpu"),
                       requested: str = "auto") -> int:
    """Bytes of KV cache per block of `block_size` tokens, for a model of `dtype` on `device`
    with the cache `requested` (a `KV_CACHE_DTYPES` name)."""
    cache_dtype = resolve_kv_cache_dtype(model, dtype, device, requested)
    if cache_dtype == kv_u8.DTYPE:
        return sum(block_size * (kv_u8.bytes_per_token(a.num_kv_heads, a.head_dim)
                                 + kv_u8.bytes_per_token(a.num_kv_heads, a.v_head_dim))
                   for a in attention_layers(model))
    element = torch.empty((), dtype=cache_dtype).element_size()
    return sum(block_size * a.num_kv_heads * element
               * (a.head_dim + (0 if a.values_in_keys else a.v_head_dim))
               for a in attention_layers(model))


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.zeros, but on the CPU in fresh anonymous memory (mmap), whose pages the kernel
    zeroes when first written: a large cache then costs neither load time nor resident memory
    for the blocks no sequence has used (torch.zeros writes every page at once). Private: a
    shared anonymous mapping is shared memory, whose first writes fault slower (the 16-stream
    cache stores took 0.34-0.42 ms a step instead of 0.27)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes == 0:  # (an mmap cannot be empty)
        return torch.zeros(shape, dtype=dtype, device=device)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    return torch.frombuffer(memory, dtype=torch.uint8).view(dtype).view(shape)


def _layer_caches(a: Attention, num_blocks: int, block_size: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's key and value caches; the values a view into the keys for `values_in_keys`."""
    if dtype == kv_u8.DTYPE:
        zeros = functools.partial(_zeros, device=device)
        return tuple(kv_u8.allocate(num_blocks, block_size, a.num_kv_heads, dim, zeros)
                     for dim in (a.head_dim, a.v_head_dim))
    k_cache = _zeros((num_blocks, block_size, a.num_kv_heads, a.head_dim), dtype, device)
    if a.values_in_keys:
        return k_cache, k_cache[..., :a.v_head_dim]
    return k_cache, _zeros((num_blocks, block_size, a.num_kv_heads, a.v_head_dim), dtype, device)


class ModelRunner:
    """Owns the model and its KV cache; `run` executes one scheduled step. On the CPU, pure
    decode steps are replayed from recordings (`DecodeGraphs`) where the model allows it."""

    def __init__(self, model: nn.Module, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device, max_context: int | None = None,
                 kv_cache_dtype: str = "auto"):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.kv_dtype = resolve_kv_cache_dtype(model, dtype, device, kv_cache_dtype)
        self.kv_caches = [_layer_caches(a, num_blocks, block_size, self.kv_dtype, device)
                          for a in attention_layers(model)]
        max_blocks = num_blocks if max_context is None else min(num_blocks,
                                                                 -(-max_context // block_size))
        self.decode_graphs = (DecodeGraphs(model, self.kv_caches, max_blocks)
                              if device.type == "cpu" else None)
        if device.type == "cpu":
            release_free_memory()  # what loading the model allocated and freed

    def _slot(self, block_table: list[int], position: int) -> int:
        """The KV cache slot that holds the token at `position` of a sequence."""
        return block_table[position // self.block_size] * self.block_size \
            + position % self.block_size

    def _batch(self, scheduled: list[ScheduledSequence], all_logits: bool) -> Batch:
        input_ids, positions, slots, cu, context_lens, logits_rows = [], [], [], [0], [], []
        for item in scheduled:
            seq, start = item.seq, item.seq.num_computed
            end = start + item.num_new_tokens
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(self._slot(seq.block_table, p) for p in range(start, end))
            cu.append(cu[-1] + item.num_new_tokens)
            context_lens.append(end)
            if all_logits:
                logits_rows.extend(range(cu[-2], cu[-1]))
            elif item.completes_input:
                logits_rows.append(cu[-1] - 1)
        width = max(len(item.seq.block_table) for item in scheduled)
        tables = [item.seq.block_table + [-1] * (width - len(item.seq.block_table))
                  for item in scheduled]

        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, device=self.device)

        return Batch(
            input_ids=tensor(input_ids, torch.int64),
            positions=tensor(positions, torch.int64),
            cu_seqlens_q=tensor(cu, torch.int32),
            context_lens=tensor(context_lens, torch.int32),
            block_tables=tensor(tables, torch.int32),
            slot_mapping=tensor(slots, torch.int64),
            kv_caches=self.kv_caches,
            logits_indices=tensor(logits_rows, torch.int64),
            max_q_len=max(item.num_new_tokens for item in scheduled),
        )

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate cache blocks (source, destination) in every layer."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for caches in self.kv_caches:
            for cache in caches:
                blocks = kv_u8.block_storage(cache) if cache.dtype == kv_u8.DTYPE else cache
                blocks[dst] = blocks[src]

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSequence], all_logits: bool = False) -> torch.Tensor:
        """Logits [rows, vocab]: one row per sequence whose input is complete, or with
        `all_logits` one row per new token (for scoring and tests). A replayed decode step's
        logits are the recording's buffer: read them before the next `run` (or clone them)."""
        if self.decode_graphs is not None and not all_logits and all(
                item.num_new_tokens == 1 and item.completes_input for item in scheduled):
            logits = self._replay_decode(scheduled)
            if logits is not None:
                return logits
        logits = self.model(self._batch(scheduled, all_logits))
        new_tokens = sum(item.num_new_tokens for item in scheduled)
        if self.device.type == "cpu" and new_tokens >= LONG_STEP_TOKENS:
            release_free_memory()
        return logits

    def _replay_decode(self, scheduled: list[ScheduledSequence]) -> torch.Tensor | None:
        positions = [item.seq.num_computed for item in scheduled]
        return self.decode_graphs.run(
            [item.seq.token_ids[p] for item, p in zip(scheduled, positions)], positions,
            [self._slot(item.seq.block_table, p) for item, p in zip(scheduled, positions)],
            [p + 1 for p in positions], [item.seq.block_table for item in scheduled])
