"""The older loader API of mistral.rs's Python package (seed 000), over the same engine:

    loader = MistralLoader(model_id=..., kind=ModelKind.QuantizedGGUF,
                           quantized_model_id=..., quantized_filename=...)
    runner = loader.load()
    runner.send_chat_completion_request(Request(messages=[...], repetition_penalty=1.0))
"""
from __future__ import annotations

import enum
from typing import Any

from mistralrs.api.runner import Runner
from mistralrs.api.which import Which


class ModelKind(enum.Enum):
    Normal = "normal"
    XLoraNormal = "xlora_normal"
    QuantizedGGUF = "quantized_gguf"
    QuantizedGGML = "quantized_ggml"
    XLoraGGUF = "xlora_gguf"
    XLoraGGML = "xlora_ggml"


class _Loader:
    """Shared by the architecture loaders: remembers the options, `load()` builds a Runner."""

    architecture: str

    def __init__(self, model_id: str, kind: ModelKind = ModelKind.Normal,
                 no_kv_cache: bool = False, use_flash_attn: bool | None = None,
                 repeat_last_n: int = 64, gqa: int | None = None, order_file: str | None = None,
                 quantized_model_id: str | None = None, quantized_filename: str | None = None,
                 xlora_model_id: str | None = None, chat_template: str | None = None,
                 tokenizer_json: str | None = None):
        self.model_id = model_id
        self.kind = ModelKind(kind)
        self.no_kv_cache = no_kv_cache
        self.repeat_last_n = repeat_last_n
        self.quantized_model_id = quantized_model_id
        self.quantized_filename = quantized_filename
        self.xlora_model_id = xlora_model_id
        self.chat_template = chat_template
        self.tokenizer_json = tokenizer_json

    def _which(self) -> Any:
        if self.kind in (ModelKind.XLoraNormal, ModelKind.XLoraGGUF, ModelKind.XLoraGGML):
            raise NotImplementedError("X-LoRA models are not supported yet by mistralrs-triton")
        if self.kind is ModelKind.QuantizedGGML:
            raise NotImplementedError("the legacy GGML format is not supported; convert the file "
                                      "to GGUF with llama.cpp's tools and use "
                                      "ModelKind.QuantizedGGUF")
        if self.kind is ModelKind.QuantizedGGUF:
            if not (self.quantized_model_id and self.quantized_filename):
                raise ValueError("ModelKind.QuantizedGGUF needs quantized_model_id and "
                                 "quantized_filename")
            # model_id names the tokenizer's repository, unless it is the GGUF's own location.
            tok = None if self.model_id == self.quantized_model_id else self.model_id
            return Which.GGUF(quantized_model_id=self.quantized_model_id,
                              quantized_filename=self.quantized_filename, tok_model_id=tok)
        return Which.Plain(model_id=self.model_id, arch=self.architecture,
                           tokenizer_json=self.tokenizer_json)

    def load(self, token_source: str = "cache", max_seqs: int = 2,
             truncate_sequence: bool = False, logfile: str | None = None,
             revision: str | None = None, token_source_value: str | None = None) -> Runner:
        source = f"{token_source}:{token_source_value}" if token_source_value else token_source
        return Runner(self._which(), max_seqs=max_seqs, chat_template=self.chat_template,
                      no_kv_cache=self.no_kv_cache, token_source=source,
                      repeat_last_n=self.repeat_last_n, truncate_sequence=truncate_sequence,
                      logfile=logfile, revision=revision)


class MistralLoader(_Loader):
    architecture = "Mistral"


class MixtralLoader(_Loader):
    architecture = "Mixtral"


class GemmaLoader(_Loader):
    architecture = "Gemma"


class LlamaLoader(_Loader):
    architecture = "Llama"


def NormalLoader(cls: type[_Loader], model_id: str, **options) -> _Loader:
    """`NormalLoader(LlamaLoader, model_id=...)`: a plain (unquantized) model."""
    return cls(model_id, kind=ModelKind.Normal, **options)


def QuantizedLoader(cls: type[_Loader], model_id: str, is_gguf: bool = True,
                    **options) -> _Loader:
    """`QuantizedLoader(LlamaLoader, model_id=..., quantized_model_id=..., quantized_filename=...)`."""
    kind = ModelKind.QuantizedGGUF if is_gguf else ModelKind.QuantizedGGML
    return cls(model_id, kind=kind, **options)


def XLoraLoader(cls: type[_Loader], model_id: str, **options) -> _Loader:
    return cls(model_id, kind=ModelKind.XLoraNormal, **options)


def XLoraQuantizedLoader(cls: type[_Loader], model_id: str, is_gguf: bool = True,
                         **options) -> _Loader:
    kind = ModelKind.XLoraGGUF if is_gguf else ModelKind.XLoraGGML
    return cls(model_id, kind=kind, **options)
