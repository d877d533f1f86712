"""A byte-level BPE vocabulary's tables in the native kernels (`kernels/cpu/bpe.c`): token
lookup and merging over the vocabulary's own `StringArray` buffer, ~2.5 MiB for SmolLM2 where
Python's dictionaries take ~15 MiB, and a prompt merged in one call."""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from mistralrs.kernels.cpu import native
from mistralrs.loading.string_array import StringArray


class NativeBPETable:
    """Answers what `byte_level_bpe.DictBPETable` answers, by the native kernels."""

    def __init__(self, lib, handle: int, tokens: StringArray, ignore_merges: bool):
        self._lib = lib
        self._handle = handle
        self._tokens = tokens  # the kernels' tables point into its buffers
        self._ignore_merges = int(ignore_merges)
        weakref.finalize(self, lib.mrs_bpe_free, handle)

    @classmethod
    def build(cls, tokens: StringArray, merges: StringArray,
              ignore_merges: bool) -> NativeBPETable | None:
        """None where the kernels are not built here, or the vocabulary repeats a token or has a
        merge that is not two tokens joined into a third (the caller's checks name it)."""
        lib = native.library()
        if lib is None:
            return None
        problem = ctypes.c_longlong()
        handle = lib.mrs_bpe_new(tokens.data, tokens.starts.ctypes.data, len(tokens),
                                 merges.data, merges.starts.ctypes.data, len(merges),
                                 ctypes.byref(problem))
        if not handle:
            if problem.value == 0:
                raise MemoryError("no memory for the BPE vocabulary's tables")
            return None
        return cls(lib, handle, tokens, ignore_merges)

    def token_id(self, text: str) -> int | None:
        encoded = text.encode("utf-8", "surrogatepass")
        found = self._lib.mrs_bpe_token_id(self._handle, encoded, len(encoded))
        return None if found < 0 else found

    def encode(self, pieces: list[str]) -> list[int]:
        """The ids of the pieces (spelled in the byte alphabet), each merged on its own."""
        if not pieces:
            return []
        joined = ("\0".join(pieces) + "\0").encode("utf-8", "surrogatepass")
        ids = np.empty(len(joined), np.int32)
        count = self._lib.mrs_bpe_encode(self._handle, joined, len(joined),
                                         self._ignore_merges, ids.ctypes.data)
        if count < 0:
            raise MemoryError("no memory to merge the text's pieces")
        return ids[:count].tolist()
