"""The 8-bit KV cache (`kv_cache_dtype="int8"`): its layout, and the torch reference of what
`cpu/kv_u8.h` computes.

A layer's cache is a uint8 tensor [num_blocks, block_size, num_kv_heads, head_dim] of codes
round(x / s) + 128, where s = max|x| / 127 for each row x (one head of one token), as llama.cpp's
q8_0 cache keeps a scale per 32 values. In memory a block holds its rows head by head
([num_kv_heads, block_size, head_dim]: the attention reads one head's rows at a time, in order,
which the CPU's prefetchers follow), then their float32 scales [num_kv_heads, block_size], so
that codes and scales of a block move together (`block_storage`: what copy-on-write copies). Half the bytes of a float16 cache; the
attention over it computes on integers (see `cpu/kv_u8.h`), and on the CPU only.
"""
from __future__ import annotations

from typing import Callable

import torch

from mistralrs.errors import EngineOptionError

DTYPE = torch.uint8
BIAS = 128
SCALE_BYTES = 4


def allocate(num_blocks: int, block_size: int, num_heads: int, head_dim: int,
             zeros: Callable[[tuple[int, ...], torch.dtype], torch.Tensor]) -> torch.Tensor:
    """A zeroed cache (codes 0 and scales 0 read as zeros, as a zeroed float cache would),
    from `zeros(shape, dtype)`."""
    codes = block_size * num_heads * head_dim
    storage = zeros((num_blocks, block_size * num_heads * (head_dim + SCALE_BYTES)), DTYPE)
    return storage[:, :codes].view(num_blocks, num_heads, block_size, head_dim).transpose(1, 2)


def bytes_per_token(num_heads: int, head_dim: int) -> int:
    return num_heads * (head_dim + SCALE_BYTES)


def is_cache(cache: torch.Tensor) -> bool:
    """Whether `cache` is laid out as `allocate` makes it."""
    if cache.dtype != DTYPE or cache.dim() != 4:
        return False
    _, block_size, heads, dim = cache.shape
    return cache.stride() == (block_size * heads * (dim + SCALE_BYTES), dim, block_size * dim, 1)


def block_storage(cache: torch.Tensor) -> torch.Tensor:
    """[num_blocks, bytes]: each block's codes and scales."""
    return cache.as_strided((cache.shape[0], cache.stride(0)), (cache.stride(0), 1))


def scales(cache: torch.Tensor) -> torch.Tensor:
    """float32 [num_blocks, block_size, num_heads]: the rows' scales (a view)."""
    num_blocks, block_size, heads, dim = cache.shape
    tail = block_storage(cache)[:, block_size * heads * dim:]
    return tail.view(torch.float32).view(num_blocks, heads, block_size).transpose(1, 2)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 rows x [..., D] -> (uint8 codes [..., D], float32 scales [...])."""
    x = x.float()
    scale = x.abs().amax(dim=-1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.where(scale[..., None] > 0, torch.round(x / safe[..., None]), 0.0)
    return (codes.clamp(-127, 127) + BIAS).to(DTYPE), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (codes.float() - BIAS) * scale[..., None]


def store_rows(cache: torch.Tensor, blocks, offsets, rows: torch.Tensor) -> None:
    """cache[blocks, offsets] = rows [..., H, D] (float), quantized: their codes and scales
    (`blocks`, `offsets`: indices as torch indexing takes them)."""
    codes, scale = quantize(rows)
    cache[blocks, offsets] = codes
    scales(cache)[blocks, offsets] = scale


def gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """The blocks `block_ids` (any shape) as float32 [*block_ids.shape, block_size, H, D]."""
    flat = block_ids.flatten()
    rows = dequantize(cache.index_select(0, flat), scales(cache).index_select(0, flat))
    return rows.view(*block_ids.shape, *cache.shape[1:])


def check_supported(device: torch.device, values_in_keys: bool) -> None:
    if device.type != "cpu":
        raise EngineOptionError("the int8 KV cache runs on the CPU kernels only; on "
                                f"{device.type} use the cache type 'auto'")
    if values_in_keys:
        raise EngineOptionError("the int8 KV cache does not support models whose values are a "
                                "view into their keys (latent attention); use the cache type "
                                "'auto'")

