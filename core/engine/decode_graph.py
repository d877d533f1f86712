"""Decode steps on the CPU replayed from a recording instead of run through Python.

A decode step of a small model makes a few hundred native kernel calls, and running the
model's Python to make them costs as much as the kernels. So the first decode step of each
batch size (rounded up to a power of two) is recorded (`native.recording`): the model runs on
static input tensors, every buffer it allocates is kept, and the calls are stored with their
arguments. Later steps of that size write their inputs into the static tensors and replay the
calls (the CPU's counterpart of a CUDA graph). Padding rows attend to one cached position and
store nothing; their logits are dropped.

A recording is only valid when every computation of the step is a native call: while
recording, a torch function mode lets torch allocate (`torch.empty`), make views and read
metadata, but stops at anything else (a model using a path without native kernels: float
weights, biases, dynamic rope, ...), and that model's steps then simply run as usual. (A
function mode, not a dispatch mode: the first dispatch mode of a process imports
torch._dynamo, a second and a hundred megabytes.)
"""
from __future__ import annotations

import logging

import torch
from torch.overrides import TorchFunctionMode

from mistralrs.kernels.cpu import native
from mistralrs.layers import Batch

log = logging.getLogger(__name__)


class _NotNative(Exception):
    pass


_READS_DATA = frozenset({"item", "tolist", "numpy", "__bool__", "__int__", "__float__",
                         "__index__", "__array__", "__setitem__"})
"""Tensor methods that bring values into Python (a recording would freeze them) or write."""


class _OnlyNativeCompute(TorchFunctionMode):
    """Lets torch allocate with `torch.empty` (keeping what it makes in `keep`), make views
    and answer questions about shapes; raises `_NotNative` at anything that computes, writes in
    place or reads values into Python."""

    def __init__(self, keep: list):
        super().__init__()
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _READS_DATA or (name.endswith("_") and not name.endswith("__")) \
                or "out" in kwargs:
            raise _NotNative(name)
        result = func(*args, **kwargs)
        produced = result if isinstance(result, (list, tuple)) else [result]
        tensors = [t for t in produced if isinstance(t, torch.Tensor)]
        if tensors:
            if func is torch.empty:
                self.keep.extend(tensors)
                return result
            inputs = {a.untyped_storage().data_ptr() for a in (*args, *kwargs.values())
                      if isinstance(a, torch.Tensor)}
            if any(t.untyped_storage().data_ptr() not in inputs for t in tensors):
                raise _NotNative(name)  # a new tensor: something computed it
        return result


class _Graph:
    """One recorded decode step for batches of up to `size` sequences."""

    def __init__(self, size: int, max_blocks: int, kv_caches):
        self.size = size
        self.batch = Batch(
            input_ids=torch.zeros(size, dtype=torch.int64),
            positions=torch.zeros(size, dtype=torch.int64),
            cu_seqlens_q=torch.arange(size + 1, dtype=torch.int32),
            context_lens=torch.ones(size, dtype=torch.int32),
            block_tables=torch.zeros(size, max_blocks, dtype=torch.int32),
            slot_mapping=torch.full((size,), -1, dtype=torch.int64),
            kv_caches=kv_caches,
            logits_indices=torch.arange(size, dtype=torch.int64),
            max_q_len=1,
        )
        b = self.batch
        self._ids, self._positions = b.input_ids.numpy(), b.positions.numpy()
        self._context, self._tables = b.context_lens.numpy(), b.block_tables.numpy()
        self._slots = b.slot_mapping.numpy()
        self.recording: native.Recording | None = None
        self.logits: torch.Tensor | None = None

    def set_inputs(self, input_ids: list[int], positions: list[int], slots: list[int],
                   context_lens: list[int], tables: list[list[int]]) -> None:
        n = len(input_ids)
        self._ids[:n], self._ids[n:] = input_ids, 0
        self._positions[:n], self._positions[n:] = positions, 0
        self._slots[:n], self._slots[n:] = slots, -1
        self._context[:n], self._context[n:] = context_lens, 1
        for row, table in zip(self._tables, tables):  # entries past a table's end go unread
            row[:len(table)] = table

    def record(self, model: torch.nn.Module) -> torch.Tensor:
        """Run the step (its result is this step's logits) while recording it."""
        with native.recording() as recording, _OnlyNativeCompute(recording.keep):
            logits = model(self.batch)
        if logits.dtype is not torch.float32:
            raise _NotNative("logits are not float32")
        self.recording, self.logits = recording, logits
        return logits

    def replay(self) -> torch.Tensor:
        self.recording.replay()
        return self.logits


class DecodeGraphs:
    """The recorded decode steps of one model runner (see the module docstring). `run` returns
    the logits [n, vocab] of a pure decode step of n sequences, valid until the next `run`, or
    None where the step must run as usual (the model cannot be recorded; the native kernels
    are off)."""

    def __init__(self, model: torch.nn.Module, kv_caches, max_blocks: int):
        self.model = model
        self.kv_caches = kv_caches
        self.max_blocks = max_blocks
        self.graphs: dict[int, _Graph] = {}
        self.enabled = native.library() is not None

    def run(self, input_ids: list[int], positions: list[int], slots: list[int],
            context_lens: list[int], tables: list[list[int]]) -> torch.Tensor | None:
        n = len(input_ids)
        if not self.enabled or max(map(len, tables)) > self.max_blocks:
            return None
        size = 1 << (n - 1).bit_length()
        graph = self.graphs.get(size)
        if graph is None:
            graph = _Graph(size, self.max_blocks, self.kv_caches)
            graph.set_inputs(input_ids, positions, slots, context_lens, tables)
            try:
                logits = graph.record(self.model)
            except _NotNative as e:
                log.info("decode steps run through Python: %s has no native kernel", e)
                self.enabled = False
                return None
            self.graphs[size] = graph
        else:
            graph.set_inputs(input_ids, positions, slots, context_lens, tables)
            logits = graph.replay()
        # The recording's own buffer, not a copy (3 MB a step at 16 sequences of SmolLM2): the
        # caller reads it before the next step, whose replay overwrites it.
        return logits[:n]
