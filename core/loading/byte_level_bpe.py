"""The byte-level BPE tokenizer of GGUF files (`tokenizer.ggml.model` = `gpt2`), as llama.cpp
and Hugging Face's `tokenizers` run it.

Encoding: the text is cut at added tokens (user-defined ones always, control and unknown ones
when special tokens are parsed), each stretch of plain text is split by the pre-tokenizer's
regexes in turn (the matches and the text between them both become pieces), and each piece is
spelled in GPT-2's byte alphabet (every UTF-8 byte one printable character) and merged: every
step joins the adjacent pair with the lowest-ranked merge (the leftmost on equal ranks) until
no merge applies. With `ignore_merges` (Llama 3) a piece that is itself a token is taken whole.

Token lookup and merging go through a table: the native kernels' (`native_vocab.py`: ~2.5 MiB for
SmolLM2's 49k tokens and merges, built in a few ms) where they are built, else `DictBPETable`'s
two dictionaries over the strings (~15 MiB, ~25 ms), the reference the native one is tested
against. A Hugging Face BPE built from the same lists takes ~100 ms and more memory again.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import regex

from mistralrs.loading.pair_joining import join_pairs
from mistralrs.loading.token_matcher import TokenMatcher


def gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable Latin-1 bytes stand for
    themselves, the other bytes for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {chr(byte): byte for byte in printable}
    others = (byte for byte in range(256) if byte not in alphabet.values())
    alphabet.update({chr(256 + n): byte for n, byte in enumerate(others)})
    return alphabet


GPT2_CHAR_TO_BYTE = gpt2_byte_alphabet()
# str.translate table from a text's UTF-8 bytes read as Latin-1 to their GPT-2 characters
_SPELL_BYTES = {byte: char for char, byte in GPT2_CHAR_TO_BYTE.items()}
_CACHE_LIMIT = 1 << 16  # cached pieces; the cache starts over when full


def piece_bytes(piece: str) -> bytes:
    """The bytes a token's text in the byte alphabet stands for; an added token written as plain
    text (some character outside the alphabet) stands for its UTF-8."""
    try:
        return bytes(map(GPT2_CHAR_TO_BYTE.__getitem__, piece))
    except KeyError:
        return piece.encode()


class BPETable(Protocol):
    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text`, or None."""

    def encode(self, pieces: list[str]) -> list[int]:
        """The ids of the pieces (spelled in the byte alphabet), each merged on its own."""


class DictBPETable:
    """`BPETable` by Python dictionaries: `vocab` maps token texts to ids, `merges[r]` is the
    merge of rank r as "left right" (both tokens, their concatenation a token too: the caller
    checks). Merged pieces are cached."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[str], ignore_merges: bool):
        self._ids = vocab
        # the first of two equal merges keeps its rank, as in llama.cpp
        self._ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        self._ignore_merges = ignore_merges
        self._cache: dict[str, list[int]] = {}

    def token_id(self, text: str) -> int | None:
        return self._ids.get(text)

    def encode(self, pieces: list[str]) -> list[int]:
        ids = []
        for piece in pieces:
            piece_ids = self._cache.get(piece)
            if piece_ids is None:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                piece_ids = self._cache[piece] = self._merge(piece)
            ids += piece_ids
        return ids

    def _merge(self, piece: str) -> list[int]:
        """The ids of one piece: its characters joined by merge rank."""
        ids, ranks = self._ids, self._ranks
        if self._ignore_merges and piece in ids:
            return [ids[piece]]
        chars = [char for char in piece if char in ids]  # (as tokenizers: no unknown token)
        parts = join_pairs(chars, lambda left, right: ranks.get(left + " " + right))
        return [ids[part] for part in parts]


class ByteLevelBPETokenizer:
    """`tokens[i]` is token i's text (in the byte alphabet, or plain text for added tokens),
    `table` looks tokens up and merges pieces, `regexes` are the pre-tokenizer's splits.
    `special_ids` are split out of a text only when special tokens are parsed and skipped by
    `decode(skip_special_tokens=True)`, `user_defined_ids` are split out of every text."""

    concatenates_token_bytes = True
    """`decode` is the UTF-8 decoding of its tokens' bytes joined: no token's bytes depend on
    its neighbours (see `Tokenizer.concatenates_token_bytes`)."""

    def __init__(self, tokens: Sequence[str], table: BPETable, regexes: Sequence[str],
                 special_ids: Iterable[int], user_defined_ids: Iterable[int], *,
                 bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool):
        self._tokens = tokens
        self._table = table
        self._splits = [regex.compile(pattern) for pattern in regexes]
        self.vocab_size = len(tokens)
        self.special_token_ids = frozenset(special_ids)
        user_defined = [tokens[i] for i in user_defined_ids]
        special = [tokens[i] for i in self.special_token_ids]
        self._split_always = TokenMatcher(user_defined)
        self._split_special = TokenMatcher(user_defined + special)
        self._bos = [bos_id] if add_bos else []
        self._eos = [eos_id] if add_eos else []
        self._bytes: dict[int, bytes] = {}  # token_bytes of the tokens decoded so far

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True,
               parse_special: bool = True) -> list[int]:
        ids = list(self._bos) if add_special_tokens else []
        splitter = self._split_special if parse_special else self._split_always
        for stretch, is_token in splitter.split(text):
            if is_token:
                ids.append(self._table.token_id(stretch))
            else:
                ids += self._table.encode(self.pre_tokenize(stretch))
        return ids + (list(self._eos) if add_special_tokens else [])

    def pre_tokenize(self, text: str) -> list[str]:
        """The pieces of plain `text` that are merged separately, in the byte alphabet."""
        pieces = [text]
        for split in self._splits:
            cut: list[str] = []
            for piece in pieces:
                at = 0
                for match in split.finditer(piece):
                    start, end = match.span()
                    if start > at:
                        cut.append(piece[at:start])
                    if end > start:
                        cut.append(piece[start:end])
                    at = end
                if at < len(piece):
                    cut.append(piece[at:])
            pieces = cut
        return [piece.encode().decode("latin-1").translate(_SPELL_BYTES) for piece in pieces]

    # --- decoding ---------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return b"".join(self.token_bytes(token_id) for token_id in ids
                        if not (skip_special_tokens and token_id in self.special_token_ids)
                        ).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (`piece_bytes`); b"" past the vocabulary. Kept once
        looked up: streaming decodes each generated token a few times (`IncrementalDetokenizer`),
        and a GGUF vocabulary reads its strings from the file on each lookup."""
        found = self._bytes.get(token_id)
        if found is None:
            found = piece_bytes(self._tokens[token_id]) if 0 <= token_id < self.vocab_size else b""
            self._bytes[token_id] = found
        return found

    def is_byte_token(self, token_id: int) -> bool:
        return False  # every byte is a character of the alphabet, not a token of its own

    def token_to_id(self, text: str) -> int | None:
        return self._table.token_id(text)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokens[token_id] if 0 <= token_id < self.vocab_size else None
