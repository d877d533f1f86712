"""x @ W.T on the CPU for W in GGUF blocks, with the native kernels of `quant_matmul.c`.

A weight is repacked once (`repack`, at load) into 16-row records and then multiplied by
`PackedLinears`: one call computes every weight of a group that reads the same input (the q, k
and v projections; gate and up), so the input is quantized once and the threads split all of
their rows. The activations are quantized to int8 per 32 columns, as llama.cpp does; the
result equals float32 arithmetic on those quantized activations (`quantize_dequantize_rows`)
up to summation order. Types: the legacy Q4_0 ... Q8_0 and the K-quants Q2_K ... Q8_K.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from gguf import GGMLQuantizationType as Q

from mistralrs.kernels.cpu import native
from mistralrs.kernels.gguf.layout import row_elements

SUPPORTED_TYPES = frozenset({Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K,
                             Q.Q5_K, Q.Q6_K, Q.Q8_K})


class _Job(ctypes.Structure):
    _fields_ = [("qtype", ctypes.c_int), ("n", ctypes.c_int), ("w", ctypes.c_void_p),
                ("out", ctypes.c_void_p), ("out_stride", ctypes.c_longlong),
                ("accumulate", ctypes.c_int)]


@dataclass(frozen=True, eq=False)
class RepackedWeight:
    """A weight [out_features, in_features] as the native kernels' records (uint8 `data`);
    compared by identity."""

    qtype: Q
    out_features: int
    in_features: int
    data: torch.Tensor


def threads() -> int:
    return torch.get_num_threads()


REPACK_CHUNK_BYTES = 16 << 20
"""Packed bytes repacked at a time when the source's pages are released as it goes."""


def repack(packed: torch.Tensor, qtype: Q,
           release_rows: Callable[[int, int], None] | None = None) -> RepackedWeight | None:
    """Packed GGUF rows uint8 [N, row_bytes] as records; None where the native kernels cannot
    take the weight (not built here, another type, or rows that are not whole super-blocks).
    With `release_rows` (a memory-mapped weight's, see `QuantizedTensor`), each chunk of rows
    is released once repacked, so that a large weight never sits in memory twice.
    Inside `background_repacks()` the records are written by the kernels' background thread,
    and are only complete once that context has exited."""
    lib = native.library()
    if lib is None or qtype not in SUPPORTED_TYPES or packed.device.type != "cpu":
        return None
    n, k = packed.shape[0], row_elements(qtype, packed.shape[1])
    size = lib.mrs_repacked_bytes(int(qtype), n, k)
    if size < 0:
        return None
    if not packed.is_contiguous():
        packed, release_rows = packed.contiguous(), None  # a copy: the file's rows stay
    data = torch.empty(size, dtype=torch.uint8)
    group_bytes = size // -(-n // 16)
    row_bytes = packed.shape[1]
    chunk = n if release_rows is None else max(16, REPACK_CHUNK_BYTES // row_bytes // 16 * 16)
    pending = getattr(_background, "pending", None)
    for first in range(0, n, chunk):
        rows = min(chunk, n - first)
        source = packed.data_ptr() + first * row_bytes
        records = data.data_ptr() + first // 16 * group_bytes
        if pending is not None and lib.mrs_repack_background(
                int(qtype), source, rows, k, records, release_rows is not None) == 0:
            continue
        lib.mrs_repack(int(qtype), source, rows, k, records, threads())
        if release_rows is not None:
            release_rows(first, first + rows)
    if pending is not None:
        pending.append((packed, data))  # in use by the background thread until the context exits
    return RepackedWeight(qtype, n, k, data)


_background = threading.local()


@contextlib.contextmanager
def background_repacks():
    """Let this thread's `repack` calls return at once, the records being written by the
    kernels' background thread (C, no GIL) while the caller goes on: a model's loading builds
    its modules and tokenizer meanwhile, and the page faults of the records' new memory (~0.5
    ms a MiB on a VM) overlap that work. On exit, waits until every record is written."""
    lib = native.library()
    if lib is None or getattr(_background, "pending", None) is not None:
        yield  # nothing to repack, or nested: the outer context waits
        return
    _background.pending = []
    try:
        yield
    finally:
        lib.mrs_background_wait()
        _background.pending = None


_scratch = threading.local()


def scratch_bytes(size: int) -> torch.Tensor:
    """A per-thread scratch buffer of at least `size` bytes, grown when needed (the quantized
    activations of a matmul, the partial results of decode attention)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < size:
        buffer = _scratch.buffer = torch.empty(max(size, 1 << 16), dtype=torch.uint8)
    native.keep_alive(buffer)
    return buffer


class PackedLinears:
    """Several repacked weights with the same `in_features`, applied to one input: the outputs
    side by side, float32 [..., sum of out_features]. One native call per activation group
    among the weights (usually one call). An instance reuses its job descriptions from call to
    call: one thread at a time (an engine's), each thread its own instance."""

    def __init__(self, weights: Sequence[RepackedWeight]):
        if len({w.in_features for w in weights}) != 1 or not 1 <= len(weights) <= 16:
            raise ValueError("PackedLinears takes 1 to 16 weights sharing in_features")
        self._lib = native.library()
        self.weights = list(weights)  # the jobs point into their records
        self.in_features = weights[0].in_features
        self._activation_row_bytes = self._lib.mrs_activation_bytes(1, self.in_features)
        self.out_features = sum(w.out_features for w in weights)
        by_group: dict[int, list[tuple[int, RepackedWeight]]] = {}
        column = 0
        for w in weights:
            by_group.setdefault(activation_group(w.qtype), []).append((column, w))
            column += w.out_features
        self._calls = []
        """(jobs, each job's first output column) per native call."""
        for members in by_group.values():
            jobs = (_Job * len(members))()
            for job, (_, w) in zip(jobs, members):
                job.qtype, job.n, job.w = int(w.qtype), w.out_features, w.data.data_ptr()
                job.out_stride = self.out_features
            self._calls.append((jobs, [4 * column for column, _ in members]))

    def __call__(self, x: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in_features] -> float32 [..., out_features]. With `add_to` (float32, contiguous,
        x's rows by out_features) the products are added into it instead, and it is returned."""
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if rows.dtype is not torch.float32 or rows.stride(-1) != 1:
            rows = rows.float().contiguous()
        m = rows.shape[0]
        out = torch.empty(m, self.out_features) if add_to is None else add_to
        if m:
            base, accumulate = out.data_ptr(), add_to is not None
            scratch = scratch_bytes(m * self._activation_row_bytes).data_ptr()
            for jobs, offsets in self._calls:
                for job, offset in zip(jobs, offsets):
                    job.out, job.accumulate = base + offset, accumulate
                native.call(self._lib.mrs_quant_matmul, jobs, len(jobs), rows.data_ptr(),
                            rows.stride(0), m, self.in_features, scratch, threads())
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)


def dequantize_repacked(weight: RepackedWeight, ids: torch.Tensor | None = None,
                        scale: float = 1.0) -> torch.Tensor:
    """The float32 weight [out_features, in_features] the records hold, or its rows `ids`
    times `scale` (the embedding lookups of a table tied to an output layer)."""
    lib = native.library()
    if ids is None:
        out = torch.empty(weight.out_features, weight.in_features)
        lib.mrs_dequantize_repacked(int(weight.qtype), weight.data.data_ptr(),
                                    weight.out_features, weight.in_features, out.data_ptr())
        return out
    return _lookup(lib.mrs_dequantize_repacked_rows, weight.qtype, weight.data,
                   weight.out_features, weight.in_features, ids, scale)


def _lookup(kernel, qtype: Q, table: torch.Tensor, rows: int, cols: int, ids: torch.Tensor,
            scale: float) -> torch.Tensor:
    """float32 [len(ids), cols]: rows `ids` of a table of `rows` rows (GGUF blocks or records)
    times `scale`, by one of the kernels `mrs_dequantize_rows`, `mrs_dequantize_repacked_rows`."""
    ids = ids.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(len(ids), cols)
    status = native.call(kernel, int(qtype), table.data_ptr(), rows, cols, ids.data_ptr(),
                         len(ids), scale, out.data_ptr(), threads())
    if status == -2:
        raise IndexError(f"token ids must be in 0..{rows - 1}")
    return out


def activation_group(qtype: Q) -> int:
    """Columns that share one activation scale when x meets a weight of this type: 32 for the
    legacy types (llama.cpp's Q8_0/Q8_1, the scale rounded to fp16), 256 for the K-quants
    (Q8_K, a float32 scale)."""
    return native.library().mrs_activation_group(int(qtype))


def quantize_dequantize_rows(x: torch.Tensor, group: int) -> torch.Tensor:
    """float32 [M, K] -> the values the kernels multiply x with for weights of activation group
    `group`: each group quantized to int8 with scale max|x| / 127, then scaled back."""
    lib = native.library()
    x = x.float().contiguous()
    out = torch.empty_like(x)
    scratch = torch.empty(lib.mrs_activation_bytes(x.shape[0], x.shape[1]), dtype=torch.uint8)
    lib.mrs_quantize_dequantize_rows(x.data_ptr(), x.shape[0], x.shape[1], group, out.data_ptr(),
                                     scratch.data_ptr())
    return out


def dequantize_rows(packed: torch.Tensor, qtype: Q, ids: torch.Tensor,
                    scale: float = 1.0) -> torch.Tensor | None:
    """Rows `ids` of a packed matrix times `scale`, as float32 [len(ids), K] (an embedding
    lookup), or None where the native kernels do not take the type."""
    lib = native.library()
    if lib is None or qtype not in SUPPORTED_TYPES or packed.device.type != "cpu":
        return None
    return _lookup(lib.mrs_dequantize_rows, qtype, packed.contiguous(), packed.shape[0],
                   row_elements(qtype, packed.shape[1]), ids, scale)
