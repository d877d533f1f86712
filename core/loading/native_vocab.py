"""A GGUF vocabulary's tables in the native kernels (`kernels/cpu/vocab.c`): token lookup and
merging over the vocabulary's own `StringArray` buffer, a few MiB where Python's dictionaries
take tens (SmolLM2: ~2.5 against ~15 MiB), and a text merged in one call. `NativeBPETable` and
`NativeSentencePieceTable` answer what their Python references (`byte_level_bpe.DictBPETable`,
`sentencepiece.DictSentencePieceTable`) answer."""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from mistralrs.kernels.cpu import native
from mistralrs.loading.sentencepiece import byte_token_ids
from mistralrs.loading.string_array import StringArray

_NO_MERGES = StringArray.of([])


class _NativeVocabulary:
    def __init__(self, lib, handle: int, tokens: StringArray):
        self._lib = lib
        self._handle = handle
        self._tokens = tokens  # the kernels' tables point into its buffers
        weakref.finalize(self, lib.mrs_vocab_free, handle)

    @classmethod
    def _new(cls, tokens: StringArray, merges: StringArray):
        """(library, handle), or None where the kernels are not built here, or the vocabulary
        repeats a token or has a merge that is not two tokens joined into a third (the caller's
        checks name it)."""
        lib = native.library()
        if lib is None:
            return None
        problem = ctypes.c_longlong()
        handle = lib.mrs_vocab_new(tokens.data, tokens.starts.ctypes.data, len(tokens),
                                   merges.data, merges.starts.ctypes.data, len(merges),
                                   ctypes.byref(problem))
        if not handle:
            if problem.value == 0:
                raise MemoryError("no memory for the vocabulary's tables")
            return None
        return lib, handle

    def token_id(self, text: str) -> int | None:
        encoded = text.encode("utf-8", "surrogatepass")
        found = self._lib.mrs_vocab_token_id(self._handle, encoded, len(encoded))
        return None if found < 0 else found

    def _encoded(self, kernel, *args, room: int) -> list[int]:
        """The ids `kernel(handle, *args, out)` writes into `out` (room for `room` of them)."""
        ids = np.empty(room, np.int32)
        count = kernel(self._handle, *args, ids.ctypes.data)
        if count < 0:
            raise MemoryError("no memory to merge the text")
        return ids[:count].tolist()


class NativeBPETable(_NativeVocabulary):
    """Byte-level BPE: tokens and merges."""

    def __init__(self, lib, handle: int, tokens: StringArray, ignore_merges: bool):
        super().__init__(lib, handle, tokens)
        self._ignore_merges = int(ignore_merges)

    @classmethod
    def build(cls, tokens: StringArray, merges: StringArray,
              ignore_merges: bool) -> NativeBPETable | None:
        """None where the kernels are not built here or the vocabulary is malformed."""
        made = cls._new(tokens, merges)
        return None if made is None else cls(*made, tokens, ignore_merges)

    def encode(self, pieces: list[str]) -> list[int]:
        """The ids of the pieces (spelled in the byte alphabet), each merged on its own."""
        if not pieces:
            return []
        joined = ("\0".join(pieces) + "\0").encode("utf-8", "surrogatepass")
        return self._encoded(self._lib.mrs_bpe_encode, joined, len(joined), self._ignore_merges,
                             room=len(joined))


class NativeSentencePieceTable(_NativeVocabulary):
    """SentencePiece as llama.cpp runs it: tokens and their scores."""

    def __init__(self, lib, handle: int, tokens: StringArray, scores: np.ndarray,
                 unk_id: int | None):
        super().__init__(lib, handle, tokens)
        self._scores = np.ascontiguousarray(scores, np.float32)
        self.byte_ids = byte_token_ids(self.token_id)
        self._byte_id_array = None if self.byte_ids is None else np.asarray(self.byte_ids, np.int32)
        self._unk_id = -1 if unk_id is None else unk_id

    @classmethod
    def build(cls, tokens: StringArray, scores: np.ndarray,
              unk_id: int | None) -> NativeSentencePieceTable | None:
        """`scores[i]`: token i's merge priority. A piece that is no token is spelled in byte
        tokens, else becomes `unk_id` (None: nothing). None where the kernels are not built
        here or a token repeats."""
        made = cls._new(tokens, _NO_MERGES)
        return None if made is None else cls(*made, tokens, scores, unk_id)

    def encode(self, text: str) -> list[int]:
        """The ids of one stretch of text (spaces already spelled "▁")."""
        encoded = text.encode("utf-8", "surrogatepass")
        byte_ids = 0 if self._byte_id_array is None else self._byte_id_array.ctypes.data
        return self._encoded(self._lib.mrs_spm_encode, self._scores.ctypes.data, byte_ids,
                             self._unk_id, encoded, len(encoded), room=len(encoded))
