"""The model's tokenizer: text to token ids and back, with the special tokens and chat template
that come with it, read from Hugging Face files or rebuilt from GGUF metadata.

It wraps a backend that does the work: a Hugging Face `tokenizers.Tokenizer` (tokenizer.json
files), or for GGUF files the `ByteLevelBPETokenizer` or `SentencePieceTokenizer` that their
metadata describes. All answer `encode`, `decode`, `token_bytes`, `is_byte_token`, `token_to_id`,
`id_to_token`, `vocab_size` and `special_token_ids` (`_HFBackend` adapts the first).
"""
from __future__ import annotations

import enum
import json
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import processors

from mistralrs.errors import ChatTemplateError, TokenizerError
from mistralrs.loading.byte_level_bpe import ByteLevelBPETokenizer, piece_bytes
from mistralrs.loading.gguf_tokenizer import build_gguf_tokenizer
from mistralrs.loading.sentencepiece import SPACE_MARK, SentencePieceTokenizer

_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


class _Spelling(enum.Enum):
    """How the backend's vocabulary writes the bytes a token stands for."""

    BYTE_LEVEL = "byte_level"  # GPT-2: every byte is one printable character
    SENTENCEPIECE = "sentencepiece"  # text with "▁" for a space, maybe "<0xNN>" for a raw byte
    TEXT = "text"  # anything else: a token is what decoding it alone gives

    @staticmethod
    def of(decoder_types: set[str]) -> _Spelling:
        if "ByteLevel" in decoder_types:
            return _Spelling.BYTE_LEVEL
        if {"ByteFallback", "Metaspace"} & decoder_types:
            return _Spelling.SENTENCEPIECE
        return _Spelling.TEXT


class _HFBackend:
    """A Hugging Face `tokenizers.Tokenizer` with the backend interface. `add_bos` / `add_eos`,
    when given, replace its post-processor so that `encode(..., add_special_tokens=True)` adds
    exactly those tokens; when both are None its own post-processor decides."""

    def __init__(self, backend: BackendTokenizer, bos_token_id: int | None,
                 eos_token_id: int | None, add_bos: bool | None, add_eos: bool | None):
        self._backend = backend
        # `encode_special_tokens` is a setting of the shared backend, so encodes take turns.
        self._encode_lock = threading.Lock()
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)  # slow to ask each time
        added = backend.get_added_tokens_decoder()
        self.special_token_ids = frozenset(i for i, token in added.items() if token.special)
        decoder_types = _component_types(backend.decoder)
        self._spelling = _Spelling.of(decoder_types)
        self._byte_fallback = "ByteFallback" in decoder_types
        if add_bos is not None or add_eos is not None:
            self._set_post_processor(bool(add_bos), bos_token_id, bool(add_eos), eos_token_id)

    def _set_post_processor(self, add_bos: bool, bos_token_id: int | None, add_eos: bool,
                            eos_token_id: int | None) -> None:
        def marker(wanted: bool, token_id: int | None, what: str) -> list[tuple[str, int]]:
            if not wanted:
                return []
            if token_id is None:
                raise TokenizerError(f"the tokenizer should add a {what} token but names none")
            return [(self._backend.id_to_token(token_id), token_id)]

        bos = marker(add_bos, bos_token_id, "BOS")
        eos = marker(add_eos, eos_token_id, "EOS")
        self._backend.post_processor = processors.TemplateProcessing(
            single=[text for text, _ in bos] + ["$A"] + [text for text, _ in eos],
            special_tokens=bos + eos)

    def encode(self, text: str, add_special_tokens: bool, parse_special: bool) -> list[int]:
        with self._encode_lock:
            self._backend.encode_special_tokens = not parse_special
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._backend.id_to_token(token_id)
        if piece is None:  # past the tokenizer's vocabulary (a padded embedding table)
            return b""
        if self._spelling is _Spelling.BYTE_LEVEL:
            return piece_bytes(piece)
        if self._spelling is _Spelling.SENTENCEPIECE:
            if self._byte_fallback and _BYTE_TOKEN.fullmatch(piece):
                return bytes([int(piece[3:5], 16)])
            return piece.replace(SPACE_MARK, " ").encode()
        return self._backend.decode([token_id], skip_special_tokens=False).encode()

    def is_byte_token(self, token_id: int) -> bool:
        piece = self._backend.id_to_token(token_id)
        return self._byte_fallback and piece is not None and bool(_BYTE_TOKEN.fullmatch(piece))

    def token_to_id(self, text: str) -> int | None:
        return self._backend.token_to_id(text)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)


class Tokenizer:
    """Encodes and decodes text for one model. Build one with `from_hf_files` or
    `from_gguf_metadata`."""

    def __init__(self, backend: _HFBackend | ByteLevelBPETokenizer | SentencePieceTokenizer, *,
                 bos_token_id: int | None = None, eos_token_id: int | None = None,
                 extra_eos_token_ids: Iterable[int] = (), pad_token_id: int | None = None,
                 chat_template: str | None = None):
        self._backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.eos_token_ids = frozenset(extra_eos_token_ids) | (
            {eos_token_id} if eos_token_id is not None else set())
        self.pad_token_id = pad_token_id
        self.vocab_size = backend.vocab_size
        self.special_token_ids = backend.special_token_ids
        self.chat_template = chat_template
        # Whether decode(ids) is always the tokens' bytes joined, decoded as UTF-8 (byte-level
        # BPE): streaming can then emit a token that is whole characters by itself as it is.
        # Not so for SentencePiece ("▁" is dropped at the start) or a tokenizer.json's decoders.
        self.concatenates_token_bytes = getattr(backend, "concatenates_token_bytes", False)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """The tokenizer a GGUF file carries; `metadata` maps GGUF keys to plain Python values."""
        parts = build_gguf_tokenizer(metadata)
        return cls(parts.backend, bos_token_id=parts.bos_token_id, eos_token_id=parts.eos_token_id,
                   extra_eos_token_ids=parts.end_of_generation_ids,
                   pad_token_id=parts.pad_token_id, chat_template=parts.chat_template)

    @classmethod
    def from_hf_files(cls, tokenizer_json: str | Path, tokenizer_config: str | Path | None = None,
                      extra_dir: str | Path | None = None) -> Tokenizer:
        """A Hugging Face tokenizer: `tokenizer.json`, and `tokenizer_config.json` when it exists
        (special tokens, `add_bos_token` / `add_eos_token`, chat template).

        The chat template is read from `chat_template.jinja`, else `chat_template.json`, in
        `extra_dir` (default: the folder of `tokenizer_json`), else from the config, as
        transformers does."""
        tokenizer_json = Path(tokenizer_json)
        if not tokenizer_json.is_file():
            raise TokenizerError(f"tokenizer file {tokenizer_json} does not exist")
        try:
            backend = BackendTokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # tokenizers reports every problem as a plain Exception
            raise TokenizerError(f"{tokenizer_json} is not a valid tokenizer.json: {e}") from None
        config_path = Path(tokenizer_config) if tokenizer_config is not None else None
        config = _read_json(config_path) if config_path and config_path.is_file() else {}
        folder = Path(extra_dir) if extra_dir is not None else tokenizer_json.parent

        def token_id(field: str) -> int | None:
            text = _token_text(config.get(field), field)
            return None if text is None else backend.token_to_id(text)

        bos, eos = token_id("bos_token"), token_id("eos_token")
        adapted = _HFBackend(backend, bos, eos, _config_flag(config, "add_bos_token"),
                             _config_flag(config, "add_eos_token"))
        return cls(adapted, bos_token_id=bos, eos_token_id=eos,
                   pad_token_id=token_id("pad_token"),
                   chat_template=_chat_template(config, config_path, folder))

    # --- encoding and decoding ------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True,
               parse_special: bool = True) -> list[int]:
        """Token ids of `text`. `add_special_tokens`: add the BOS/EOS the model asks for.
        `parse_special`: special-token text in `text` (say `<|im_start|>`) becomes that token;
        when False it is encoded as the plain text it is."""
        return self._backend.encode(text, add_special_tokens, parse_special)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes `token_id` stands for, out of context (a SentencePiece "▁" is a space, also
        at the start of a text, where decoding drops it). May be part of a UTF-8 character;
        empty for an id past the tokenizer's vocabulary."""
        return self._backend.token_bytes(token_id)

    def is_byte_token(self, token_id: int) -> bool:
        """Whether `token_id` is a byte-fallback token `<0xNN>`: one raw byte, decoded together
        with the byte tokens around it."""
        return self._backend.is_byte_token(token_id)

    def token_to_id(self, text: str) -> int | None:
        return self._backend.token_to_id(text)

    # --- facts about the vocabulary -------------------------------------------------------

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_token_id is None else self._backend.id_to_token(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_token_id is None else self._backend.id_to_token(self.eos_token_id)


def _component_types(component: Any) -> set[str]:
    """The `type` of a backend component and of every component nested in it."""
    if component is None:
        return set()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(component.__getstate__()))
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{path} should hold a JSON object")
    return value


def _token_text(value: Any, field: str) -> str | None:
    """A special token in tokenizer_config.json: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise TokenizerError(f"tokenizer_config.json {field} should be a string or "
                             f"{{\"content\": ...}}, not {value!r}")
    return value


def _config_flag(config: dict[str, Any], field: str) -> bool | None:
    value = config.get(field)
    if value is not None and not isinstance(value, bool):
        raise TokenizerError(f"tokenizer_config.json {field} should be true or false, "
                             f"not {value!r}")
    return value


def _chat_template(config: dict[str, Any], config_path: Path | None, folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        return _pick_template(_read_json(as_json).get("chat_template"), as_json)
    return _pick_template(config.get("chat_template"), config_path)


def _pick_template(value: Any, source: Path | None) -> str | None:
    """A `chat_template` entry: a template, or a list of {name, template} (take "default", else
    the first)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(
            isinstance(entry, dict) and isinstance(entry.get("template"), str) for entry in value):
        named = {entry.get("name"): entry["template"] for entry in value}
        return named.get("default", value[0]["template"])
    raise ChatTemplateError(f"{source}: chat_template should be a string or a list of "
                            "{\"name\": ..., \"template\": ...}")
