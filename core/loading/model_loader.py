"""From a model id to a ready model: resolve files, pick the architecture plugin, parse the
config, build the model on the meta device, stream the weights in, and build the tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from mistralrs.errors import (
    ArchitectureNotFoundError,
    ModelFormatError,
    ModelNotFoundError,
    TokenizerError,
)
from mistralrs.kernels import cpu
from mistralrs.loading import hub
from mistralrs.loading.config import eos_ids, gguf_config_view, read_json, validate_sizes
from mistralrs.loading.gguf_file import GGUFFile
from mistralrs.loading.safetensors_files import (
    checkpoint_files,
    count_tensors,
    iter_tensors,
    open_checkpoint,
)
from mistralrs.loading.tokenizer import Tokenizer
from mistralrs.loading.weights import load_weights
from mistralrs.plugins import Architecture, PluginRegistry, default_registry

_HF_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


@dataclass
class LoadedModel:
    model: nn.Module
    config: Any
    architecture: Architecture
    tokenizer: Tokenizer
    eos_token_ids: frozenset[int]
    max_context: int
    dtype: torch.dtype
    device: torch.device
    name: str


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it; fp32 on CPU, where the quantized kernels compute in fp32
    anyway and fp32 keeps results comparable with the reference implementations."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _resolve_architecture(registry: PluginRegistry, arch: str | None,
                          detect: Callable[[], Architecture]) -> Architecture:
    """An explicit `arch` wins; the checkpoint's own claim decides otherwise. An explicit
    `arch` that another plugin's architecture claims the checkpoint for is a mistake."""
    if arch is None:
        return detect()
    chosen = registry.get(arch)
    try:
        found = detect()
    except ArchitectureNotFoundError:
        return chosen
    if found.name != chosen.name:
        raise ModelFormatError(f"the architecture {chosen.name!r} was requested, but the "
                               f"checkpoint is a {found.name} model; drop `arch` or pick "
                               f"{found.name}")
    return chosen


def _parse_config(arch: Architecture, raw: dict[str, Any], fmt: str) -> Any:
    """The plugin's config parser, with its failures on nonsense values turned into a
    `ModelFormatError` (plugins parse; the core makes sure bad files fail cleanly)."""
    try:
        return arch.parse_config(raw, fmt)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        if isinstance(e, ModelFormatError):
            raise
        raise ModelFormatError(f"the {arch.name} config cannot be read: {type(e).__name__}: "
                               f"{e}; the file is corrupt or not a {arch.name} model") from None


def _build(arch: Architecture, config: Any, tensors, n_tensors: int, fmt: str,
           dtype: torch.dtype, device: torch.device, progress: bool) -> nn.Module:
    validate_sizes(config)
    with torch.device("meta"):
        model = arch.build_model(config)
    with tqdm(total=n_tensors, desc="Loading weights", unit="tensor", disable=not progress,
              leave=False) as bar:
        load_weights(model, tensors, arch.weight_mapper(config, fmt), dtype, progress=bar)
    return model.to(device).eval()


def load_plain(model_id: str, arch: str | None = None, dtype: torch.dtype | None = None,
               tokenizer_json: str | None = None, chat_template: str | None = None,
               revision: str | None = None, device: torch.device | None = None,
               registry: PluginRegistry | None = None, progress: bool = True,
               token: str | bool | None = None) -> LoadedModel:
    """A Hugging Face model directory (or hub id) with config.json and safetensors weights."""
    registry = registry or default_registry()
    device = device or default_device()
    dtype = dtype or auto_dtype(device)
    model_dir = hub.resolve_dir(model_id, revision, allow_patterns=_HF_FILES, token=token)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"{model_dir} has no config.json; is it a Hugging Face model "
                                 "directory? (for a .gguf file use Which.GGUF)")
    raw = read_json(config_path)
    architecture = _resolve_architecture(registry, arch, lambda: registry.for_hf_config(raw))
    config = _parse_config(architecture, raw, "hf")
    handles = open_checkpoint(checkpoint_files(model_dir))
    model = _build(architecture, config, iter_tensors(handles), count_tensors(handles), "hf",
                   dtype, device, progress)
    tokenizer = Tokenizer.from_hf_files(
        Path(tokenizer_json) if tokenizer_json else model_dir / "tokenizer.json",
        model_dir / "tokenizer_config.json", model_dir)
    generation = model_dir / "generation_config.json"
    eos = set(config.eos_token_ids) | set(tokenizer.eos_token_ids)
    if generation.is_file():
        eos |= set(eos_ids(read_json(generation)))
    return LoadedModel(model, config, architecture, _with_template(tokenizer, chat_template),
                       frozenset(eos), config.max_position_embeddings, dtype, device,
                       name=model_id)


def load_gguf(quantized_model_id: str, quantized_filename: str | list[str],
              tok_model_id: str | None = None, arch: str | None = None,
              dtype: torch.dtype | None = None, chat_template: str | None = None,
              revision: str | None = None, device: torch.device | None = None,
              registry: PluginRegistry | None = None, progress: bool = True,
              token: str | bool | None = None) -> LoadedModel:
    """A GGUF file (or the parts of a split one). The tokenizer and chat template come from the
    file's metadata, or from `tok_model_id` (a Hugging Face repo or directory) when given."""
    registry = registry or default_registry()
    device = device or default_device()
    dtype = dtype or auto_dtype(device)
    filenames = [quantized_filename] if isinstance(quantized_filename, str) else list(quantized_filename)
    if not filenames:
        raise ModelNotFoundError("quantized_filename is empty: name the .gguf file(s) to load")
    paths = [hub.resolve_file(quantized_model_id, name, revision, token) for name in filenames]
    gguf = GGUFFile.open(paths)
    view = gguf_config_view(gguf.metadata)
    architecture = _resolve_architecture(registry, arch,
                                         lambda: registry.for_gguf(gguf.architecture, view))
    config = _parse_config(architecture, view, "gguf")
    with cpu.background_repacks():  # the tokenizer is built while the weights are repacked
        model = _build(architecture, config, gguf.tensors(), len(gguf.tensor_names()), "gguf",
                       dtype, device, progress)
        tokenizer = _gguf_tokenizer(gguf, tok_model_id, revision, token)
    gguf.release_pages()  # the weights the model keeps in a layout of its own were copied
    return LoadedModel(model, config, architecture, _with_template(tokenizer, chat_template),
                       frozenset(tokenizer.eos_token_ids), config.max_position_embeddings,
                       dtype, device, name=paths[0].name)


def _gguf_tokenizer(gguf: GGUFFile, tok_model_id: str | None, revision: str | None,
                    token: str | bool | None) -> Tokenizer:
    """The file's own tokenizer, or the one of `tok_model_id` (a Hugging Face repo or directory)."""
    if tok_model_id:
        tok_dir = hub.resolve_dir(tok_model_id, revision, allow_patterns=_HF_FILES, token=token)
        return Tokenizer.from_hf_files(tok_dir / "tokenizer.json",
                                       tok_dir / "tokenizer_config.json", tok_dir)
    try:
        return Tokenizer.from_gguf_metadata(gguf.metadata)
    except TokenizerError as e:
        raise TokenizerError(f"{e}; pass tok_model_id= to take the tokenizer from a "
                             "Hugging Face repository instead") from None


def _with_template(tokenizer: Tokenizer, chat_template: str | None) -> Tokenizer:
    """Apply a user-given chat template: a literal template or a path to a .jinja/.json file."""
    if chat_template is None:
        return tokenizer
    path = Path(chat_template)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        chat_template = read_json(path).get("chat_template", text) if path.suffix == ".json" else text
    tokenizer.chat_template = chat_template
    return tokenizer
