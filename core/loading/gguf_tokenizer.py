"""Rebuild the tokenizer a GGUF file carries, giving the token ids llama.cpp gives on the same
file.

Two GGUF tokenizer models matter:

- `gpt2`: byte-level BPE from `tokens` + `merges` (`byte_level_bpe.py`). The text is first
  split by the regexes that `tokenizer.ggml.pre` names (llama.cpp keeps one list per
  pre-tokenizer; the ones supported here are in `_PRE_TOKENIZERS`), then each piece is spelled
  in GPT-2's byte alphabet and merged.
- `llama`: SentencePiece `tokens` + `scores`, run as llama.cpp runs them (`sentencepiece.py`).

`tokenizer.ggml.token_type` decides what becomes an added token: control and unknown tokens are
special (matched in the input only when special-token parsing is on, skipped when decoding with
`skip_special_tokens`); user-defined tokens are always matched in the input, before the model
sees it, as llama.cpp does. Unused tokens stay plain vocabulary entries.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from mistralrs.errors import ModelFormatError, TokenizerError
from mistralrs.loading.byte_level_bpe import BPETable, ByteLevelBPETokenizer, DictBPETable
from mistralrs.loading.native_vocab import NativeBPETable, NativeSentencePieceTable
from mistralrs.loading.sentencepiece import (DictSentencePieceTable, SentencePieceTable,
                                             SentencePieceTokenizer)
from mistralrs.loading.string_array import StringArray

logger = logging.getLogger(__name__)

_KEY = gguf.Keys.Tokenizer
_TYPE = gguf.TokenType

# Control tokens that end a turn although the metadata may only name the model's `eos`: llama.cpp
# stops generation on them too.
_END_OF_TURN_TEXTS = frozenset({
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>",
})

# Pre-tokenizer regexes, applied in order, each splitting the pieces the previous one left (the
# matches and the text between them both become pieces).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
                 r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+")
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
_CJK_RUN_REGEX = "[一-龥ࠀ-一가-퟿]+"
# (Escapes: these characters have canonical equivalents that editors may silently substitute.)
_DEEPSEEK_LLM_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕ"
    "ἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭ"
    "ℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳ"
    "Ꙁ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃")

_REGEXES = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2_REGEX, r"\p{N}+", "[0-9][0-9][0-9]"],
    "gpt2": [_GPT2_REGEX],
    "starcoder": [r"\p{N}", _GPT2_REGEX],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_REGEX, "[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3_REGEX],
    "qwen2": [_QWEN2_REGEX],
    "deepseek-llm": ["[\r\n]", rf"\s?[{_DEEPSEEK_LLM_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                     r"\s+$", _CJK_RUN_REGEX, r"\p{N}+"],
    "deepseek-coder": ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_RUN_REGEX, r"\p{N}"],
}


@dataclass(frozen=True)
class _PreTokenizer:
    regexes: str  # a key of _REGEXES
    ignore_merges: bool = False  # a piece that is itself a token is emitted whole
    add_bos: bool = False  # llama.cpp's default when the file has no add_bos_token


_LLAMA3 = _PreTokenizer("llama3", ignore_merges=True, add_bos=True)
# `tokenizer.ggml.pre` values, as llama.cpp names them.
_PRE_TOKENIZERS = {
    "default": _PreTokenizer("default"),
    **dict.fromkeys(["gpt-2", "phi-2", "mpt", "olmo", "jina-es", "jina-de"], _PreTokenizer("gpt2")),
    **dict.fromkeys(["starcoder", "smollm", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b"], _PreTokenizer("starcoder")),
    "falcon": _PreTokenizer("falcon"),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3"], _LLAMA3),
    **dict.fromkeys(["dbrx", "smaug-bpe"], _PreTokenizer("llama3")),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], _PreTokenizer("qwen2")),
    "deepseek-llm": _PreTokenizer("deepseek-llm"),
    "deepseek-coder": _PreTokenizer("deepseek-coder"),
}


@dataclass(frozen=True)
class GGUFTokenizer:
    """A rebuilt GGUF tokenizer and the facts about it the metadata gives."""

    backend: ByteLevelBPETokenizer | SentencePieceTokenizer
    bos_token_id: int | None
    eos_token_id: int | None
    end_of_generation_ids: frozenset[int]  # eos, eot, eom and end-of-turn control tokens
    pad_token_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def build_gguf_tokenizer(metadata: Mapping[str, Any]) -> GGUFTokenizer:
    """The tokenizer described by GGUF metadata (keys mapped to plain Python values).

    Raises ModelFormatError for malformed metadata and TokenizerError for a tokenizer kind this
    module cannot rebuild."""
    model = _optional(metadata, _KEY.MODEL, str)
    if model is None:
        raise ModelFormatError(f"GGUF metadata has no {_KEY.MODEL}: the file carries no tokenizer")
    if model not in ("gpt2", "llama"):
        raise TokenizerError(f"GGUF tokenizer model {model!r} ({_KEY.MODEL}) is not supported; "
                             "supported: 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)")
    tokens = _token_list(metadata)
    types = _token_types(metadata, len(tokens))
    # llama.cpp's defaults for SentencePiece files that leave these out
    defaults = {_KEY.BOS_ID: 1, _KEY.EOS_ID: 2, _KEY.UNK_ID: 0} if model == "llama" else {}
    special = {key: _token_id(metadata, key, len(tokens), defaults.get(key)) for key in (
        _KEY.BOS_ID, _KEY.EOS_ID, _KEY.EOT_ID, _KEY.EOM_ID, _KEY.UNK_ID, _KEY.PAD_ID)}
    pre = _pre_tokenizer(metadata) if model == "gpt2" else None
    add_bos = _flag(metadata, _KEY.ADD_BOS, pre.add_bos if pre else True)
    add_eos = _flag(metadata, _KEY.ADD_EOS, False)
    for wanted, key in [(add_bos, _KEY.BOS_ID), (add_eos, _KEY.EOS_ID)]:
        if wanted and special[key] is None:
            raise ModelFormatError(f"GGUF metadata asks to add a token it does not name ({key})")
    tokens = tokens if isinstance(tokens, StringArray) else StringArray.of(tokens)
    if pre is not None:
        backend = ByteLevelBPETokenizer(
            tokens, _bpe_table(tokens, _merges(metadata), pre.ignore_merges),
            _REGEXES[pre.regexes],
            ids_of_type(types, _TYPE.CONTROL, _TYPE.UNKNOWN), ids_of_type(types, _TYPE.USER_DEFINED),
            bos_id=special[_KEY.BOS_ID], eos_id=special[_KEY.EOS_ID], add_bos=add_bos,
            add_eos=add_eos)
    else:
        backend = SentencePieceTokenizer(
            tokens, _sentencepiece_table(tokens, _scores(metadata, len(tokens)),
                                         special[_KEY.UNK_ID]),
            ids_of_type(types, _TYPE.CONTROL, _TYPE.UNKNOWN), ids_of_type(types, _TYPE.USER_DEFINED),
            bos_id=special[_KEY.BOS_ID], eos_id=special[_KEY.EOS_ID], add_bos=add_bos,
            add_eos=add_eos, add_space_prefix=_flag(metadata, _KEY.ADD_PREFIX, True))
    end_ids = {special[key] for key in (_KEY.EOS_ID, _KEY.EOT_ID, _KEY.EOM_ID)} - {None}
    end_ids |= {i for i in ids_of_type(types, _TYPE.CONTROL) if tokens[i] in _END_OF_TURN_TEXTS}
    return GGUFTokenizer(backend, special[_KEY.BOS_ID], special[_KEY.EOS_ID], frozenset(end_ids),
                         special[_KEY.PAD_ID], add_bos, add_eos,
                         _optional(metadata, _KEY.CHAT_TEMPLATE, str))


def ids_of_type(types: np.ndarray, *kinds: int) -> list[int]:
    """The ids of the tokens of any of these `gguf.TokenType`s."""
    return np.flatnonzero(np.isin(types, kinds)).tolist()


def _pre_tokenizer(metadata: Mapping[str, Any]) -> _PreTokenizer:
    name = _optional(metadata, _KEY.PRE, str)
    if name is None:
        logger.warning("GGUF metadata has no %s; splitting text as llama.cpp's 'default' does, "
                       "which may not match how the model was trained", _KEY.PRE)
        name = "default"
    if name not in _PRE_TOKENIZERS:
        raise TokenizerError(f"GGUF pre-tokenizer {name!r} ({_KEY.PRE}) is not supported; "
                             f"supported: {', '.join(sorted(_PRE_TOKENIZERS))}")
    return _PRE_TOKENIZERS[name]


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab = dict(zip(tokens, range(len(tokens))))
    if len(vocab) < len(tokens):  # some text twice: say which
        seen: dict[str, int] = {}
        for token_id, text in enumerate(tokens):
            if text in seen:
                raise ModelFormatError(f"GGUF vocabulary has the token {text!r} twice "
                                       f"(ids {seen[text]} and {token_id})")
            seen[text] = token_id
    return vocab


# --- reading and checking metadata values -----------------------------------------------------

def _optional(metadata: Mapping[str, Any], key: str, kind: type) -> Any:
    value = metadata.get(key)
    if value is not None and not isinstance(value, kind):
        raise ModelFormatError(f"GGUF metadata {key} should be a {kind.__name__}, "
                               f"not {type(value).__name__}")
    return value


def _flag(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = _optional(metadata, key, bool)
    return default if value is None else value


def _array(metadata: Mapping[str, Any], key: str, element: type | tuple[type, ...],
           what: str) -> Sequence | None:
    value = metadata.get(key)
    if value is None or (isinstance(value, StringArray) and element is str):
        return value
    if isinstance(value, np.ndarray):  # numbers, as the header parser reads them
        numeric_kinds = "iu" if element is int else "iuf"
        if element is str or value.dtype.kind not in numeric_kinds:
            raise ModelFormatError(f"GGUF metadata {key} should be an array of {what}")
        return value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ModelFormatError(f"GGUF metadata {key} should be an array of {what}, "
                               f"not {type(value).__name__}")
    kinds = element if isinstance(element, tuple) else (element,)
    if not all(issubclass(kind, kinds) for kind in set(map(type, value))):
        raise ModelFormatError(f"GGUF metadata {key} should be an array of {what}")
    return list(value)


def _token_list(metadata: Mapping[str, Any]) -> Sequence[str]:
    tokens = _array(metadata, _KEY.LIST, str, "strings")
    if not tokens:
        raise ModelFormatError(f"GGUF metadata has no tokens ({_KEY.LIST})")
    if (tokens.lengths().all() if isinstance(tokens, StringArray) else all(tokens)):
        return tokens
    # llama.cpp names empty tokens this way; an empty string cannot be a vocabulary entry.
    return [text or f"[EMPTY_{token_id}]" for token_id, text in enumerate(tokens)]


def _token_types(metadata: Mapping[str, Any], n_tokens: int) -> np.ndarray:
    """int64 [n_tokens]: each token's `gguf.TokenType`."""
    types = _array(metadata, _KEY.TOKEN_TYPE, int, "integers")
    if types is None:
        return np.full(n_tokens, _TYPE.NORMAL)
    if len(types) != n_tokens:
        raise ModelFormatError(f"GGUF metadata {_KEY.TOKEN_TYPE} has {len(types)} entries for "
                               f"{n_tokens} tokens")
    unknown = set(types) - set(range(max(_TYPE) + 1))  # 0: undefined
    if unknown:
        raise ModelFormatError(f"GGUF metadata {_KEY.TOKEN_TYPE} has unknown token types "
                               f"{sorted(unknown)}")
    return np.asarray(types, dtype=np.int64)


def _scores(metadata: Mapping[str, Any], n_tokens: int) -> np.ndarray:
    """float32 [n_tokens]."""
    scores = _array(metadata, _KEY.SCORES, (int, float), "numbers")
    if scores is None or len(scores) != n_tokens:
        raise ModelFormatError(f"a SentencePiece GGUF tokenizer needs one score per token in "
                               f"{_KEY.SCORES}; found {0 if scores is None else len(scores)} "
                               f"for {n_tokens} tokens")
    return np.asarray(scores, np.float32)


def _merges(metadata: Mapping[str, Any]) -> StringArray:
    merges = _array(metadata, _KEY.MERGES, str, "strings")
    if merges is None:
        raise ModelFormatError(f"a BPE GGUF tokenizer needs {_KEY.MERGES}")
    return merges if isinstance(merges, StringArray) else StringArray.of(merges)


def _bpe_table(tokens: StringArray, merges: StringArray, ignore_merges: bool) -> BPETable:
    """The native kernels' tables where they are built and the vocabulary is sound; else the
    checks in Python, which name what is wrong (a repeated token; a merge that is not two tokens
    whose concatenation is a token, split at the first space after the first character: a
    token may be a space), and Python's dictionaries."""
    table = NativeBPETable.build(tokens, merges, ignore_merges)
    if table is not None:
        return table
    token_list, merge_list = tokens.tolist(), merges.tolist()
    vocab = _vocab(token_list)
    known = vocab.__contains__
    problem = next((p for merge in merge_list if (p := _merge_problem(merge, known))), None)
    if problem is not None:
        raise ModelFormatError(problem)
    return DictBPETable(vocab, merge_list, ignore_merges)


def _sentencepiece_table(tokens: StringArray, scores: np.ndarray,
                         unk_id: int | None) -> SentencePieceTable:
    """The native kernels' table where they are built and no token repeats; else Python's
    dictionary (its check names a repeated token)."""
    table = NativeSentencePieceTable.build(tokens, scores, unk_id)
    if table is not None:
        return table
    return DictSentencePieceTable(_vocab(tokens.tolist()), scores, unk_id)


def _merge_problem(merge: str, known) -> str | None:
    left, _, right = merge[1:].partition(" ")
    left = merge[:1] + left
    if not right:
        return f"GGUF merge {merge!r} is not two tokens joined by a space"
    if not (known(left) and known(right) and known(left + right)):
        return f"GGUF merge {merge!r} names a token that is not in {_KEY.LIST}"
    return None


def _token_id(metadata: Mapping[str, Any], key: str, n_tokens: int,
              default: int | None = None) -> int | None:
    value = metadata.get(key)
    if value is None:
        return default if default is not None and default < n_tokens else None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ModelFormatError(f"GGUF metadata {key} should be a token id, not {value!r}")
    if not 0 <= value < n_tokens:
        raise ModelFormatError(f"GGUF metadata {key} = {value} is outside the vocabulary of "
                               f"{n_tokens} tokens")
    return int(value)
