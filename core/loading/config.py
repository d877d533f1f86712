"""Reading model configs: Hugging Face `config.json` / `generation_config.json` and the GGUF
metadata view that plugins' config parsers receive."""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from mistralrs.errors import ModelFormatError
from mistralrs.loading.string_array import StringArray


def require(raw: dict[str, Any], key: str) -> Any:
    """`raw[key]`, or a clear error naming the missing key."""
    try:
        return raw[key]
    except KeyError:
        raise ModelFormatError(f"model config has no {key!r}; is this the right checkpoint?") from None


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    return data


def eos_ids(raw: dict[str, Any]) -> tuple[int, ...]:
    """`eos_token_id` of a config or generation config: an int, a list, or absent."""
    value = raw.get("eos_token_id")
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)


def gguf_config_view(metadata: dict[str, Any]) -> dict[str, Any]:
    """The `<general.architecture>.*` keys of GGUF metadata with that prefix removed, plus
    `vocab_size` (from the token list when the file does not state it)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError("GGUF metadata has no general.architecture")
    prefix = arch + "."
    view = {key[len(prefix):]: value for key, value in metadata.items() if key.startswith(prefix)}
    if "vocab_size" not in view and isinstance(metadata.get("tokenizer.ggml.tokens"),
                                                  (list, StringArray)):
        view["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    return view


def gguf_rope_parameters(view: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from a GGUF config view, in the shape `rope_parameters_from_hf` returns."""
    rope: dict[str, Any] = {"rope_theta": view.get("rope.freq_base", 10000.0), "rope_type": "default"}
    scaling = view.get("rope.scaling.type")
    if scaling in ("linear", "yarn"):
        rope["rope_type"] = scaling
        rope["factor"] = view.get("rope.scaling.factor", 1.0)
        if "rope.scaling.original_context_length" in view:
            rope["original_max_position_embeddings"] = view["rope.scaling.original_context_length"]
    return rope


@dataclass
class DecoderDims:
    """The sizes every decoder-only transformer states, under their Hugging Face names: the
    base of plugins' config dataclasses (fill it with `**decoder_dims(raw, fmt)`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int


def decoder_dims(raw: dict[str, Any], fmt: str, default_head_dim: int | None = None,
                 default_context: int = 4096) -> dict[str, int]:
    """The sizes every decoder-only transformer states, under their Hugging Face names, from a
    config.json (fmt "hf") or a GGUF config view (fmt "gguf"). `head_dim` is hidden/heads unless
    the config says otherwise (or the family's transformers class has another default)."""
    if fmt == "gguf":
        heads = require(raw, "attention.head_count")
        hidden = require(raw, "embedding_length")
        return dict(
            vocab_size=require(raw, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=require(raw, "feed_forward_length"),
            num_hidden_layers=require(raw, "block_count"),
            num_attention_heads=heads,
            num_key_value_heads=raw.get("attention.head_count_kv") or heads,
            head_dim=raw.get("attention.key_length") or hidden // heads,
            max_position_embeddings=raw.get("context_length", default_context),
        )
    heads = require(raw, "num_attention_heads")
    hidden = require(raw, "hidden_size")
    return dict(
        vocab_size=require(raw, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=require(raw, "intermediate_size"),
        num_hidden_layers=require(raw, "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or default_head_dim or hidden // heads,
        max_position_embeddings=raw.get("max_position_embeddings", default_context),
    )


# Generous upper bounds: far above any published model, low enough that a corrupt config
# cannot make the loader build billions of modules or allocate absurd tensors.
_SIZE_LIMITS = {
    "vocab_size": 1 << 24,
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 4096,
    "max_position_embeddings": 1 << 24,
}


def validate_sizes(config: Any) -> None:
    """Reject a parsed config whose standard sizes are not positive integers within sane
    bounds, or whose query heads cannot share the key/value heads evenly."""
    for name, limit in _SIZE_LIMITS.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            raise ModelFormatError(f"model config {name}={value!r} is not a plausible size "
                                   f"(a positive integer up to {limit}); the file is corrupt")
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None)
    if heads and kv_heads and heads % kv_heads:
        raise ModelFormatError(f"model config has {heads} attention heads, which cannot share "
                               f"{kv_heads} key/value heads evenly; the file is corrupt")
