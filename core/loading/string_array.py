"""Many strings in one buffer: a GGUF vocabulary without a Python object per string.

SmolLM2's 49k tokens and 49k merges as lists of `str` take ~6 MiB (and the dictionaries over
them another ~9); as one UTF-8 buffer and an array of offsets they take ~1.5 MiB, and the
native vocabulary tables (`kernels/cpu/vocab.c`) index that buffer in place. A string becomes a
`str` only when asked for.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class StringArray(Sequence[str]):
    """`data` holds the strings' UTF-8 bytes, each followed by a NUL separator (a string may hold
    NULs of its own); string i is data[starts[i]:starts[i + 1] - 1]. `starts` is int64 [n + 1]."""

    def __init__(self, data: bytes, starts: np.ndarray):
        self.data = data
        self.starts = starts

    @classmethod
    def of(cls, strings: Iterable[str]) -> StringArray:
        encoded = [text.encode("utf-8", "surrogatepass") for text in strings]
        starts = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(text) + 1 for text in encoded], out=starts[1:])
        return cls(b"\0".join(encoded) + b"\0" if encoded else b"", starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"string {index} of {len(self)}")
        index %= len(self)
        start, end = self.starts[index:index + 2].tolist()
        return self.data[start:end - 1].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and \
            len(other) == len(self) and self.tolist() == list(other)

    __hash__ = None  # mutable-looking like the list it stands for

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"

    def lengths(self) -> np.ndarray:
        """Each string's length in bytes."""
        return np.diff(self.starts) - 1

    def tolist(self) -> list[str]:
        text = self.data.decode("utf-8", "surrogatepass")
        if text.count("\0") == len(self):  # no string holds a NUL: one split does
            return text.split("\0")[:-1]
        return [self[i] for i in range(len(self))]
