"""Streaming detokenization: the text of generated tokens, one token at a time.

Decoding tokens one by one goes wrong in two ways: a character can span tokens (UTF-8 bytes split
across byte-level or `<0xNN>` tokens), and a token's text can depend on its neighbours (a
SentencePiece "▁" is a space except at the start of a text). So each push decodes a short window
of recent tokens, as vLLM and TGI do: a few tokens already shown, for context, then the new ones,
and returns the text the new ones add. Text is held back while it could still change:
- while the bytes so far end inside a UTF-8 character that later bytes may complete;
- while the last token is a `<0xNN>` byte token: a run of them is decoded as a whole (one
  invalid byte turns the run's every byte into U+FFFD);
- while the new tokens have added no text, so that the context always holds text.
Pushes plus `flush()` add up to `tokenizer.decode(ids)` of all pushed ids.

Byte-level BPE tokenizers (`Tokenizer.concatenates_token_bytes`) decode by joining bytes, so a
token that is whole characters by itself, with nothing held back, is emitted as it is, without
decoding the window (most tokens of a text).
"""
from __future__ import annotations

import codecs
import os
from collections.abc import Iterable

from mistralrs.loading.tokenizer import Tokenizer

_PROMPT_CONTEXT = 6  # prompt tokens decoded before the first generated one, for context
# Tokens held back at most. Only a stream that is not text (a run of byte tokens longer than
# this, or tokens that decode to nothing) reaches it; the window then moves on anyway.
_MAX_PENDING = 64


class IncrementalDetokenizer:
    """`push(token_id)` returns the new complete text; `flush()` the rest at the end.

    `prompt_ids`: the prompt before the first pushed token; its last few tokens give context so
    the first generated token decodes as it would after the prompt (e.g. with its leading space).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Iterable[int] | None = None,
                 skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        context = [i for i in prompt_ids or () if self._shown(i)][-_PROMPT_CONTEXT:]
        self._ids = context  # context tokens, then pending ones
        self._pending_from = len(context)
        self._context_text: str | None = None  # the context's text, once decoded

    def push(self, token_id: int) -> str:
        if not self._shown(token_id):
            return ""
        if self._pending_from == len(self._ids) and self._tokenizer.concatenates_token_bytes:
            text = _whole_characters(self._tokenizer.token_bytes(token_id))
            if text:  # what the window would add (most tokens; 1-2 us instead of ~10)
                self._ids, self._pending_from, self._context_text = [token_id], 1, None
                return text
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _shown(self, token_id: int) -> bool:
        """Special tokens are skipped, and so are ids past the tokenizer's vocabulary (models
        often pad their embedding tables beyond it): they stand for no text."""
        if token_id >= self._tokenizer.vocab_size:
            return False
        return not (self._skip_special and token_id in self._tokenizer.special_token_ids)

    def _emit(self, final: bool) -> str:
        ids, start = self._ids, self._pending_from
        if start == len(ids):
            return ""
        if self._context_text is None:
            self._context_text = self._decode(ids[:start])
        context_text = self._context_text
        text = self._decode(ids)
        if not final and len(ids) - start < _MAX_PENDING and (
                len(text) <= len(context_text) or self._tokenizer.is_byte_token(ids[-1])
                or self._ends_inside_a_character(ids)):
            return ""
        # The context's text is a prefix of the window's, except when the prompt's last bytes
        # began a character that the generated ones complete.
        shared = len(os.path.commonprefix([text, context_text]))
        self._ids, self._pending_from = ids[start:], len(ids) - start
        self._context_text = None
        return text[shared:]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _ends_inside_a_character(self, ids: list[int]) -> bool:
        """Whether the bytes of `ids` end with the start of a UTF-8 character."""
        tail = b""
        for token_id in reversed(ids):  # a character has at most 4 bytes
            tail = self._tokenizer.token_bytes(token_id) + tail
            if len(tail) >= 4:
                break
        if not tail or tail[-1] < 0x80:  # ends with ASCII (the common case): complete
            return False
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.decode(tail[-4:], final=False)
        buffered, _ = decoder.getstate()
        return bool(buffered)


def _whole_characters(data: bytes) -> str:
    """`data` as text if it is complete UTF-8 characters only, else ""."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return ""
