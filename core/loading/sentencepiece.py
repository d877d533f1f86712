"""The SentencePiece tokenizer of GGUF files (`tokenizer.ggml.model` = `llama`), as llama.cpp
runs it: no Unigram search and no merge table, but the vocabulary's scores.

Encoding: the text is cut at special tokens (user-defined ones always, control and unknown ones
when special tokens are parsed; the longest match at the leftmost place first). Each stretch of
plain text gets a leading space when the vocabulary asks for one (`add_space_prefix`: at the
start and after each special token), its spaces become "▁", and its characters are joined
pairwise: every step joins the adjacent pair whose concatenation is the highest-scoring token
(the leftmost pair on equal scores). A character that is no token is spelled with `<0xNN>` byte
tokens (or the unknown token where the vocabulary has none).

Token lookup and merging go through a table: the native kernels' (`native_vocab.py`) where they
are built, else `DictSentencePieceTable`'s dictionary of the vocabulary, the reference the
native one is tested against. (A Hugging Face BPE equivalent needs every (left, right) split of
every token as a ranked merge, which for a 262k-token vocabulary takes seconds to derive and
~100 MiB to hold.)
"""
from __future__ import annotations

import array
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np

from mistralrs.loading.pair_joining import join_pairs
from mistralrs.loading.token_matcher import TokenMatcher

SPACE_MARK = "\u2581"  # "▁": how SentencePiece spells a space


def byte_token_ids(token_id: Callable[[str], int | None]) -> list[int] | None:
    """The ids of the 256 byte tokens `<0x00>`..`<0xFF>`, or None where some is missing."""
    ids = [token_id(f"<0x{byte:02X}>") for byte in range(256)]
    return None if None in ids else ids


class SentencePieceTable(Protocol):
    byte_ids: list[int] | None

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text`, or None."""

    def encode(self, text: str) -> list[int]:
        """The ids of one stretch of text (spaces already spelled "▁")."""


class DictSentencePieceTable:
    """`SentencePieceTable` by a Python dictionary: `vocab` maps token texts to ids, `scores[i]`
    is token i's merge priority; a piece that is no token is spelled in byte tokens, else
    becomes `unk_id` (None: nothing)."""

    def __init__(self, vocab: dict[str, int], scores: np.ndarray, unk_id: int | None):
        self._ids = vocab
        self._scores = array.array("f", scores.astype(np.float32).tobytes())
        self.byte_ids = byte_token_ids(vocab.get)
        self._unk_id = unk_id

    def token_id(self, text: str) -> int | None:
        return self._ids.get(text)

    def encode(self, text: str) -> list[int]:
        """llama.cpp's SentencePiece merging: the pair whose concatenation is the
        highest-scoring token first."""
        ids, scores = self._ids, self._scores

        def priority(left: str, right: str) -> float | None:
            token_id = ids.get(left + right)
            return None if token_id is None else -scores[token_id]

        out: list[int] = []
        for piece in join_pairs(list(text), priority):
            token_id = ids.get(piece)
            out += [token_id] if token_id is not None else self._spell_unknown(piece)
        return out

    def _spell_unknown(self, character: str) -> list[int]:
        if self.byte_ids is not None:
            return [self.byte_ids[byte] for byte in character.encode()]
        return [] if self._unk_id is None else [self._unk_id]


class SentencePieceTokenizer:
    """`tokens[i]` is token i's text, `table` looks tokens up and merges; `special_ids` are the
    control and unknown tokens (split out of a text only when special tokens are parsed,
    skipped by `decode(skip_special_tokens=True)`), `user_defined_ids` those split out of every
    text."""

    def __init__(self, tokens: Sequence[str], table: SentencePieceTable,
                 special_ids: Iterable[int], user_defined_ids: Iterable[int], *,
                 bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool,
                 add_space_prefix: bool):
        self._tokens = tokens
        self._table = table
        self.vocab_size = len(self._tokens)
        self.special_token_ids = frozenset(special_ids)
        user_defined = [self._tokens[i] for i in user_defined_ids]
        special = [self._tokens[i] for i in self.special_token_ids]
        self._split_always = TokenMatcher(user_defined)
        self._split_special = TokenMatcher(user_defined + special)
        self._byte_of = {token_id: byte for byte, token_id in enumerate(table.byte_ids or [])}
        self._bos = [bos_id] if add_bos else []
        self._eos = [eos_id] if add_eos else []
        self._add_space_prefix = add_space_prefix

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True,
               parse_special: bool = True) -> list[int]:
        ids = list(self._bos) if add_special_tokens else []
        after_special = True
        splitter = self._split_special if parse_special else self._split_always
        for piece, is_token in splitter.split(text):
            if is_token:
                ids.append(self._table.token_id(piece))
                after_special = True
                continue
            if self._add_space_prefix and after_special:
                piece = " " + piece
            ids += self._table.encode(piece.replace(" ", SPACE_MARK))
            after_special = False
        return ids + (list(self._eos) if add_special_tokens else [])

    # --- decoding ---------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        parts: list[str] = []
        raw = bytearray()
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size or (
                    skip_special_tokens and token_id in self.special_token_ids):
                continue
            if token_id in self._byte_of:
                raw.append(self._byte_of[token_id])
                continue
            if raw:
                parts.append(_bytes_text(raw))
                raw.clear()
            parts.append(self._tokens[token_id].replace(SPACE_MARK, " "))
        if raw:
            parts.append(_bytes_text(raw))
        text = "".join(parts)
        return text[1:] if self._add_space_prefix and text.startswith(" ") else text

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for out of context ("▁" is a space); b"" past the vocabulary."""
        if not 0 <= token_id < self.vocab_size:
            return b""
        if token_id in self._byte_of:
            return bytes([self._byte_of[token_id]])
        return self._tokens[token_id].replace(SPACE_MARK, " ").encode()

    def is_byte_token(self, token_id: int) -> bool:
        return token_id in self._byte_of

    def token_to_id(self, text: str) -> int | None:
        return self._table.token_id(text)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokens[token_id] if 0 <= token_id < self.vocab_size else None


def _bytes_text(raw: bytes) -> str:
    """Raw bytes from byte tokens: their text, or one U+FFFD per byte where they are not UTF-8
    (as Hugging Face's ByteFallback decoder)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(raw)
