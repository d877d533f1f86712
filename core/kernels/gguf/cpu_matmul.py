"""The CPU path of `quant_matmul`: weights stay packed, decoded inside kernels that torch.compile
generates (inductor's C++ backend, vectorized and parallel over output rows).

Every integer GGUF type is x = scale[g] * q + offset[g] over groups g of 16 to 256 consecutive
elements (`reference.AFFINE_BLOCKS`). `CpuWeight` lays a weight out for that form once:

- Q4_0, Q4_1, Q4_K and Q8_0: `data` is the packed rows themselves, seen as blocks; the kernels
  read the quants in place (4-bit types: runs of W bytes holding 2W elements, low nibbles
  first). Nothing is copied: a memory-mapped GGUF stays the only copy of the weight.
- The other types (5-, 6-, 2- and 3-bit layouts whose bits are costly to gather in a vectorized
  loop): int8 codes [N, groups, group], made once; one byte a weight.
- `scale` and `offset`: float32, one per group (an eighth to a quarter of a byte a weight).

Kernels, chosen by the number M of rows of x:
- M <= GEMV_MAX_ROWS (decode): one fused pass that decodes each weight and accumulates x * w
  without ever storing w, so a step reads the packed bytes once (the weight traffic of llama.cpp).
- more rows (prefill): weight row tiles are decoded to float32 (a fused pass too) and multiplied
  with `torch.mm` (MKL). Tiles bound the float copy; the decode is ~1% of the GEMM.
Where torch.compile cannot run (no C++ compiler), the same functions run eagerly.
"""
from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Callable

import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from torch.fx.experimental.proxy_tensor import make_fx

from .layout import row_elements
from .reference import AFFINE_BLOCKS

log = logging.getLogger(__name__)

GEMV_MAX_ROWS = 3
"""Above this many rows decoding W once to float32 and running MKL's GEMM beats the fused pass,
which decodes W again for every row of x (measured on 1536x576 Q4_1: equal at M = 4)."""
TILE_BYTES = 8 << 20
"""Largest float32 weight tile the prefill path decodes at once."""
REPACK_ROWS = 4096
"""Rows converted at a time when making int8 codes (bounds the temporaries of a large matrix)."""


@dataclass(frozen=True)
class NibbleView:
    """Where a 4-bit type keeps its quants: `runs` runs of `width` bytes from byte `start` of a
    block; element q = nibble + `bias`."""

    start: int
    runs: int
    width: int
    bias: int


NIBBLE_VIEWS = {
    Q.Q4_0: NibbleView(start=2, runs=1, width=16, bias=-8),
    Q.Q4_1: NibbleView(start=4, runs=1, width=16, bias=0),
    Q.Q4_K: NibbleView(start=16, runs=4, width=32, bias=0),
}
INT8_VIEWS = {Q.Q8_0: 2}
"""Types whose quants are plain int8 bytes of the block, from this byte on."""
SUPPORTED_TYPES = frozenset(AFFINE_BLOCKS)


@dataclass
class CpuWeight:
    """A packed weight [out_features, in_features] laid out for the CPU kernels of its type.

    `data`: the packed rows as blocks, uint8 [N, blocks, bytes_per_block] (a view, for the types
    read in place), or int8 codes [N, groups, group] (the repacked types). `scale`, `offset`:
    float32 [N, groups], or for the 4-bit types [N, blocks, runs, 1 or 2] (one value per run, or
    one for each nibble half of it); `offset` is None for types without one."""

    qtype: Q
    data: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    in_features: int
    decode_kernel: Callable | None = None
    """The one-row GEMV compiled for exactly this weight's shapes (`_decode_kernel`)."""

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    def rows(self, index: slice) -> "CpuWeight":
        offset = None if self.offset is None else self.offset[index]
        return CpuWeight(self.qtype, self.data[index], self.scale[index], offset, self.in_features)


def prepare(packed: torch.Tensor, qtype: Q) -> CpuWeight:
    """Lay out packed rows uint8 [N, row_bytes] of an integer GGUF type (`SUPPORTED_TYPES`)."""
    affine = AFFINE_BLOCKS[qtype]
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    n, k = packed.shape[0], row_elements(qtype, packed.shape[1])
    blocks = packed.reshape(n, -1, block_bytes)
    scale, offset = affine.scales(blocks.reshape(-1, block_bytes))
    groups = k // affine.group
    scale = scale.reshape(n, groups)
    offset = None if offset is None else offset.reshape(n, groups)
    if qtype in NIBBLE_VIEWS:
        view = NIBBLE_VIEWS[qtype]
        if offset is None:
            offset = scale * view.bias
        elif view.bias:
            offset = offset + scale * view.bias
        halves = 1 if affine.group == 2 * view.width else 2
        shape = (n, blocks.shape[1], view.runs, halves)
        return CpuWeight(qtype, blocks, scale.reshape(shape), offset.reshape(shape), k)
    if qtype not in INT8_VIEWS:
        blocks = torch.cat([affine.quants(rows.reshape(-1, block_bytes)).reshape(rows.shape[0], -1)
                            for rows in blocks.split(REPACK_ROWS)]).reshape(n, groups, affine.group)
    return CpuWeight(qtype, blocks, scale, offset, k)


# The kernels, as plain torch for torch.compile to fuse. Where a type's bytes sit inside its
# blocks is fixed per type (closure constants), so the compiled code has static inner loops and
# only N, the number of blocks and M vary between layers.

def _nibble_kernels(view: NibbleView) -> tuple[Callable, Callable]:
    span = view.runs * view.width

    def decoded_halves(blocks, scale, offset):
        codes = blocks[:, :, view.start:view.start + span].unflatten(2, (view.runs, view.width))
        low = (codes & 15).float() * scale[..., :1] + offset[..., :1]
        high = (codes >> 4).float() * scale[..., -1:] + offset[..., -1:]
        return low, high

    def gemv(x, blocks, scale, offset):
        low, high = decoded_halves(blocks, scale, offset)
        x = x.view(x.shape[0], 1, blocks.shape[1], view.runs, 2, view.width)
        return (x[..., 0, :] * low + x[..., 1, :] * high).sum((-3, -2, -1))

    def dequantize(blocks, scale, offset):
        return torch.stack(decoded_halves(blocks, scale, offset), dim=-2).view(blocks.shape[0], -1)

    return gemv, dequantize


def _byte_kernels(start: int | None, group: int) -> tuple[Callable, Callable]:
    """`start`: the int8 quants are bytes start..start+group of each block (Q8_0); None: `data` is
    already int8 codes."""

    def decoded(data, scale, offset):
        codes = data if start is None else data[:, :, start:start + group].view(torch.int8)
        weights = codes.float() * scale[..., None]
        return weights if offset is None else weights + offset[..., None]

    def gemv(x, data, scale, offset):
        x = x.view(x.shape[0], 1, data.shape[1], group)
        return (x * decoded(data, scale, offset)).sum((-2, -1))

    def dequantize(data, scale, offset):
        return decoded(data, scale, offset).view(data.shape[0], -1)

    return gemv, dequantize


class _Compiled:
    """`fn` compiled by torch.compile on first use, with dynamic shapes so that the layers of a
    model share one kernel; the eager `fn` where compiling fails (say, no C++ compiler). Inside
    a region that is itself being compiled (a user's `torch.compile(model)`) `fn` is traced into
    that region."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled: Callable | None = None

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True)
            try:
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                log.warning("torch.compile failed for the CPU GGUF kernels (%s: %s); running "
                            "them eagerly, which is much slower", type(e).__name__, e)
                self.compiled = self.fn
        return self.compiled(*args)


def _own_code(fn: Callable, name: str) -> Callable:
    """`fn` with a code object of its own. torch.compile keeps compiled graphs per code object,
    tries them one after the other on every call, and caps their number (8): each type gets its
    own kernels so that types neither share the cap nor slow each other's calls."""
    return types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name,
                              fn.__defaults__, fn.__closure__)


def _make_kernels(qtype: Q) -> tuple[_Compiled, _Compiled]:
    if qtype in NIBBLE_VIEWS:
        gemv, dequantize = _nibble_kernels(NIBBLE_VIEWS[qtype])
    else:
        gemv, dequantize = _byte_kernels(INT8_VIEWS.get(qtype), AFFINE_BLOCKS[qtype].group)
    return (_Compiled(_own_code(gemv, f"gemv_{qtype.name}")),
            _Compiled(_own_code(dequantize, f"dequantize_{qtype.name}")))


_KERNELS = {qtype: _make_kernels(qtype) for qtype in SUPPORTED_TYPES}
"""(gemv, dequantize) of each type (compiled on first use)."""


_DECODE_KERNELS: dict[tuple, Callable] = {}
"""One-row GEMVs by type and exact shapes of their operands, shared by same-shaped layers."""


def _decode_kernel(weight: CpuWeight) -> Callable:
    """The GEMV for one row of x (a decode step), compiled for this weight's exact shapes by
    inductor without torch.compile's front end: a decode step calls one per linear layer, and
    the front end's guard checks (~15 us a call) would cost as much as the kernels of a small
    model. Falls back to the dynamically shaped kernel where this compilation fails."""
    operands = [torch.empty(1, weight.in_features), weight.data, weight.scale, weight.offset]
    key = (weight.qtype, *((t.shape, t.stride()) for t in operands if t is not None))
    if key not in _DECODE_KERNELS:
        gemv = _KERNELS[weight.qtype][0]
        if weight.offset is None:
            def fn(x, data, scale):
                return gemv.fn(x, data, scale, None)
        else:
            fn = gemv.fn
        tensors = [t for t in operands if t is not None]
        try:
            from torch._inductor import standalone_compile

            compiled = standalone_compile(
                make_fx(fn, tracing_mode="fake")(*tensors), tensors,
                dynamic_shapes="from_example_inputs")
            kernel = compiled if weight.offset is not None else (
                lambda x, data, scale, offset: compiled(x, data, scale))
        except Exception as e:  # noqa: BLE001 - the dynamic kernel still works
            log.warning("compiling the %s decode GEMV failed (%s: %s); using the dynamically "
                        "shaped kernel", weight.qtype.name, type(e).__name__, e)
            kernel = gemv
        _DECODE_KERNELS[key] = kernel
    return _DECODE_KERNELS[key]


def dequantize(weight: CpuWeight) -> torch.Tensor:
    """float32 [out_features, in_features]."""
    return _KERNELS[weight.qtype][1](weight.data, weight.scale, weight.offset)


def matmul(x: torch.Tensor, weight: CpuWeight) -> torch.Tensor:
    """x float [..., K] @ W.T -> [..., N] in x's dtype (computed in float32)."""
    rows = x.reshape(-1, weight.in_features).float().contiguous()
    return _matmul_rows(rows, weight).to(x.dtype).reshape(*x.shape[:-1], weight.out_features)


def _matmul_rows(x: torch.Tensor, weight: CpuWeight) -> torch.Tensor:
    m, n = x.shape[0], weight.out_features
    if m == 0:
        return x.new_empty(0, n)
    if m == 1 and not torch.compiler.is_compiling():
        if weight.decode_kernel is None:
            weight.decode_kernel = _decode_kernel(weight)
        return weight.decode_kernel(x, weight.data, weight.scale, weight.offset)
    if m <= GEMV_MAX_ROWS:
        return _KERNELS[weight.qtype][0](x, weight.data, weight.scale, weight.offset)
    tile_rows = max(1, TILE_BYTES // (4 * weight.in_features))
    if tile_rows >= n:
        return x @ dequantize(weight).T
    out = x.new_empty(m, n)
    for start in range(0, n, tile_rows):
        rows = slice(start, start + tile_rows)
        out[:, rows] = x @ dequantize(weight.rows(rows)).T
    return out
