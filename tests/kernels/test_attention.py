"""Paged attention: the torch reference against an unpaged SDPA oracle, then the Triton kernels
(compiled on a GPU, interpreted on CPU) and the CPU fast path against the reference."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from mistralrs.kernels import attention, attention_cpu, attention_reference, attention_triton, cpu

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KEY_TILE = 64 if TRITON_DEVICE == "cuda" else 16
"""Keys per Triton tile (see attention_triton._tile_sizes): split-K tests span several."""


@dataclass
class PagedBatch:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cu_seqlens_q: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    keys: list[torch.Tensor]
    """Per sequence, its keys [context_len, Hkv, Dk] in position order (unpaged)."""
    values: list[torch.Tensor]

    def attention_args(self) -> tuple[torch.Tensor, ...]:
        return (self.q, self.k_cache, self.v_cache, self.cu_seqlens_q, self.context_lens,
                self.block_tables)

    def decode_args(self) -> tuple[torch.Tensor, ...]:
        return self.q, self.k_cache, self.v_cache, self.context_lens, self.block_tables

    def to(self, device: str) -> PagedBatch:
        moved = [tensor.to(device) for tensor in self.attention_args()]
        return PagedBatch(*moved, self.keys, self.values)


def make_batch(q_lens: list[int], context_lens: list[int], *, num_q_heads: int, num_kv_heads: int,
               head_dim: int, head_dim_v: int | None = None, block_size: int,
               dtype: torch.dtype = torch.float32, seed: int = 0) -> PagedBatch:
    """Sequences whose blocks are scattered over the cache in random order, among spare blocks
    of noise; table entries past the needed ones hold -1 or an out-of-range block id."""
    gen = torch.Generator().manual_seed(seed)
    head_dim_v = head_dim_v or head_dim
    blocks_needed = [-(-context // block_size) for context in context_lens]
    num_blocks = sum(blocks_needed) + 5
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim_v, generator=gen)
    block_tables = torch.empty(len(context_lens), max(blocks_needed) + 2, dtype=torch.int32)
    order = torch.randperm(num_blocks, generator=gen)
    keys, values = [], []
    for seq, (context, needed) in enumerate(zip(context_lens, blocks_needed)):
        blocks, order = order[:needed], order[needed:]
        block_tables[seq] = -1 if seq % 2 else num_blocks + 1000
        block_tables[seq, :needed] = blocks
        keys.append(torch.randn(context, num_kv_heads, head_dim, generator=gen))
        values.append(torch.randn(context, num_kv_heads, head_dim_v, generator=gen))
        positions = torch.arange(context)
        k_cache[blocks[positions // block_size], positions % block_size] = keys[-1]
        v_cache[blocks[positions // block_size], positions % block_size] = values[-1]
    q = torch.randn(sum(q_lens), num_q_heads, head_dim, generator=gen)
    cu_seqlens_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return PagedBatch(q.to(dtype), k_cache.to(dtype), v_cache.to(dtype), cu_seqlens_q,
                      torch.tensor(context_lens, dtype=torch.int32), block_tables, keys, values)


# A ragged batch: a whole prompt, a prefill chunk after cached blocks (each longer than one
# interpreted 16-row query tile), decode rows (one at a block boundary, one with one position).
MIXED = dict(q_lens=[19, 17, 1, 1, 1], context_lens=[19, 50, 33, 1, 24])

# (num_q_heads, num_kv_heads, block_size, head_dim, head_dim_v, sliding_window, softcap)
CONFIGS = {
    "gqa3-bs4-d64": (6, 2, 4, 64, None, None, None),
    "mha-bs16-d80-dv64-window": (2, 2, 16, 80, 64, 5, None),
    "mqa-bs16-d64-softcap-window": (4, 1, 16, 64, None, 11, 3.0),
    "gqa2-bs4-d80-softcap": (4, 2, 4, 80, None, None, 2.0),
}


def _batch(config: str, q_lens: list[int], context_lens: list[int],
           **overrides) -> tuple[PagedBatch, dict]:
    num_q_heads, num_kv_heads, block_size, head_dim, head_dim_v, window, softcap = CONFIGS[config]
    batch = make_batch(q_lens, context_lens, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                       head_dim=head_dim, head_dim_v=head_dim_v, block_size=block_size, **overrides)
    return batch, dict(scale=head_dim ** -0.5, sliding_window=window, softcap=softcap)


@pytest.mark.parametrize("sliding_window", [None, 6])
def test_reference_matches_unpaged_sdpa(sliding_window):
    batch = make_batch(q_lens=[11, 1, 7], context_lens=[11, 29, 26], num_q_heads=6,
                       num_kv_heads=2, head_dim=32, head_dim_v=24, block_size=4)
    scale = 0.3
    out = attention_reference.paged_attention(*batch.attention_args(), scale=scale,
                                              sliding_window=sliding_window)
    cu = batch.cu_seqlens_q.tolist()
    for seq, (keys, values) in enumerate(zip(batch.keys, batch.values)):
        context, q_len = keys.shape[0], cu[seq + 1] - cu[seq]
        query_pos = torch.arange(context - q_len, context)[:, None]
        key_pos = torch.arange(context)[None, :]
        mask = (key_pos <= query_pos) & (query_pos - key_pos < (sliding_window or context))
        expected = F.scaled_dot_product_attention(
            batch.q[cu[seq]:cu[seq + 1]].transpose(0, 1), keys.transpose(0, 1),
            values.transpose(0, 1), attn_mask=mask, scale=scale, enable_gqa=True)
        torch.testing.assert_close(out[cu[seq]:cu[seq + 1]], expected.transpose(0, 1),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("pass_max_q_len", [True, False])
def test_triton_paged_attention_matches_reference(config, pass_max_q_len):
    batch, options = _batch(config, **MIXED)
    batch = batch.to(TRITON_DEVICE)
    max_q_len = max(MIXED["q_lens"]) if pass_max_q_len else None
    out = attention_triton.paged_attention(*batch.attention_args(), max_q_len=max_q_len, **options)
    expected = attention_reference.paged_attention(*batch.attention_args(), **options)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config", CONFIGS)
def test_triton_split_decode_matches_reference(config):
    """Contexts of 4 key tiles, one shorter, one of a single key; windowed configs get a window
    of 2.5 tiles so that it, too, is split."""
    batch, options = _batch(config, q_lens=[1, 1, 1], context_lens=[4 * KEY_TILE, 37, 1])
    batch = batch.to(TRITON_DEVICE)
    if options["sliding_window"] is not None:
        options["sliding_window"] = 5 * KEY_TILE // 2
    num_splits = attention_triton.decode_num_splits(batch.q, batch.k_cache, batch.block_tables,
                                                    options["sliding_window"])
    assert num_splits >= 4
    out = attention_triton.paged_decode_attention(*batch.decode_args(), **options)
    expected = attention_reference.paged_decode_attention(*batch.decode_args(), **options)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_triton_16_bit_caches_accumulate_in_fp32():
    """float16, not bfloat16: Triton 3.9's interpreter multiplies bfloat16 `tl.dot` operands as
    their raw integer bits. The probabilities enter the P @ V dot rounded to 16 bits, hence the
    tolerance of a few float16 ulps."""
    batch, options = _batch("mqa-bs16-d64-softcap-window", **MIXED, dtype=torch.float16)
    batch = batch.to(TRITON_DEVICE)
    out = attention_triton.paged_attention(*batch.attention_args(), **options)
    expected = attention_reference.paged_attention(*batch.attention_args(), **options)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, expected, atol=4e-3, rtol=4e-3)
    decode, options = _batch("gqa3-bs4-d64", q_lens=[1, 1, 1], context_lens=[4 * KEY_TILE, 37, 1],
                             dtype=torch.float16)
    decode = decode.to(TRITON_DEVICE)
    out = attention_triton.paged_decode_attention(*decode.decode_args(), **options)
    expected = attention_reference.paged_decode_attention(*decode.decode_args(), **options)
    torch.testing.assert_close(out, expected, atol=4e-3, rtol=4e-3)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_cpu_paged_attention_matches_reference(config, kernels, monkeypatch):
    """The native kernels take every row as a decode; torch's path, prompts in chunks."""
    monkeypatch.setattr(attention_cpu, "QUERY_CHUNK", 4)  # long prompts go through in chunks
    batch, options = _batch(config, **MIXED)
    with cpu.reference_mode() if kernels == "torch" else contextlib.nullcontext():
        out = attention_cpu.paged_attention(*batch.attention_args(), **options)
    expected = attention_reference.paged_attention(*batch.attention_args(), **options)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("gather_bytes", [1, attention_cpu.GATHER_CHUNK_BYTES],
                         ids=["gather-per-sequence", "one-gather"])
def test_cpu_decode_matches_reference(config, gather_bytes, monkeypatch):
    monkeypatch.setattr(attention_cpu, "GATHER_CHUNK_BYTES", gather_bytes)
    context_lens = [1 + (7 * seq) % 60 for seq in range(16)]
    batch, options = _batch(config, q_lens=[1] * 16, context_lens=context_lens)
    out = attention_cpu.paged_decode_attention(*batch.decode_args(), **options)
    expected = attention_reference.paged_decode_attention(*batch.decode_args(), **options)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sliding_window", [1, 2, 3, 4, 5, 7, 9])
@pytest.mark.parametrize("implementation", ["cpu-native", "cpu-torch", "triton"])
def test_sliding_window_edges_against_reference(implementation, sliding_window, monkeypatch):
    """Every window-start offset within a cache block (size 4), and within a prompt chunk."""
    monkeypatch.setattr(attention_cpu, "QUERY_CHUNK", 3)
    shapes = dict(num_q_heads=2, num_kv_heads=1, head_dim=16, block_size=4)
    batch = make_batch(q_lens=[10, 1, 1], context_lens=[21, 14, 17], **shapes)
    decode = make_batch(q_lens=[1] * 4, context_lens=[21, 14, 17, 2], **shapes)
    options = dict(scale=0.25, sliding_window=sliding_window)
    expected = (attention_reference.paged_attention(*batch.attention_args(), **options),
                attention_reference.paged_decode_attention(*decode.decode_args(), **options))
    module = attention_triton if implementation == "triton" else attention_cpu
    device = TRITON_DEVICE if implementation == "triton" else "cpu"
    batch, decode = batch.to(device), decode.to(device)
    with cpu.reference_mode() if implementation == "cpu-torch" else contextlib.nullcontext():
        out = (module.paged_attention(*batch.attention_args(), **options),
               module.paged_decode_attention(*decode.decode_args(), **options))
    for got, want in zip(out, expected):
        torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)


def test_cpu_path_computes_bfloat16_caches_in_fp32():
    batch, options = _batch("mqa-bs16-d64-softcap-window", **MIXED, dtype=torch.bfloat16)
    out = attention_cpu.paged_attention(*batch.attention_args(), **options)
    expected = attention_reference.paged_attention(*batch.attention_args(), **options)
    assert out.dtype == torch.bfloat16
    # both round only their final fp32 result to bfloat16: at most one bf16 ulp apart
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-2, rtol=8e-3)


@pytest.mark.parametrize("implementation", [attention_reference, attention_cpu, attention_triton],
                         ids=["reference", "cpu", "triton"])
def test_store_kv_writes_exactly_the_requested_slots(implementation):
    num_blocks, block_size, num_kv_heads = 6, 4, 3
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, 80), float("nan"))
    v_cache = torch.full((num_blocks, block_size, num_kv_heads, 48), float("nan"))
    slots = torch.tensor([5, -1, 22, 0, 23, -1, 13], dtype=torch.int64)
    k = torch.randn(len(slots), num_kv_heads, 80)
    v = torch.randn(len(slots), num_kv_heads, 48)
    device = TRITON_DEVICE if implementation is attention_triton else "cpu"
    k_cache_written, v_cache_written = k_cache.to(device), v_cache.to(device)
    implementation.store_kv(k.to(device), v.to(device), k_cache_written, v_cache_written,
                            slots.to(device))
    k_cache, v_cache = k_cache_written.cpu(), v_cache_written.cpu()

    kept = slots >= 0
    written = torch.zeros(num_blocks * block_size, dtype=torch.bool)
    written[slots[kept]] = True
    k_rows, v_rows = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    torch.testing.assert_close(k_rows[slots[kept]], k[kept], rtol=0, atol=0)
    torch.testing.assert_close(v_rows[slots[kept]], v[kept], rtol=0, atol=0)
    assert k_rows[~written].isnan().all() and v_rows[~written].isnan().all()


def test_public_functions_match_reference_on_cpu():
    batch, options = _batch("gqa3-bs4-d64", **MIXED)
    torch.testing.assert_close(
        attention.paged_attention(*batch.attention_args(), max_q_len=19, **options),
        attention_reference.paged_attention(*batch.attention_args(), **options),
        atol=1e-5, rtol=1e-5)
    decode = make_batch([1, 1, 1], [33, 1, 24], num_q_heads=6, num_kv_heads=2, head_dim=64,
                        block_size=4)
    torch.testing.assert_close(
        attention.paged_decode_attention(*decode.decode_args(), **options),
        attention_reference.paged_decode_attention(*decode.decode_args(), **options),
        atol=1e-5, rtol=1e-5)


def test_public_functions_reject_mismatched_shapes():
    batch, options = _batch("gqa3-bs4-d64", **MIXED)
    with pytest.raises(AssertionError, match="head dim"):
        attention.paged_attention(batch.q[..., :32], *batch.attention_args()[1:], **options)
    with pytest.raises(AssertionError, match="share 2 kv heads"):
        attention.paged_decode_attention(batch.q[:5, :5], *batch.decode_args()[1:], **options)
    with pytest.raises(AssertionError, match="slot_mapping"):
        attention.store_kv(batch.keys[0], batch.values[0], batch.k_cache, batch.v_cache,
                           torch.zeros(3, dtype=torch.int64))
