"""The record a plugin registers for each architecture: identity, config parser, weight mapper
and forward-pass builder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Protocol

import torch

CheckpointFormat = Literal["hf", "gguf"]
"""Where a config or tensor name comes from: a Hugging Face checkpoint or a GGUF file."""


class TensorTransform(Protocol):
    def __call__(self, tensor: Any) -> Any:
        """Return the tensor to load (a torch tensor, or a packed `QuantizedTensor`)."""


@dataclass(frozen=True)
class MappedTensor:
    """One checkpoint tensor's destination: a parameter name in the model built by
    `Architecture.build_model`, and an optional transform (slice, row permutation, ...)."""

    param: str
    transform: TensorTransform | None = None


WeightMapper = Callable[[str], Iterable[MappedTensor]]
"""Checkpoint tensor name -> where it goes (empty: the tensor is not used)."""


@dataclass(frozen=True)
class Architecture:
    """Everything the core needs to load and run one model architecture.

    - `name`: the seed's enum name (`Llama`, `Gemma2`, `Phi3_5MoE`, ...), unique across plugins.
    - `hf_architectures` / `gguf_architectures`: the `config.json` `architectures` strings and
      GGUF `general.architecture` values this architecture claims.
    - `parse_config(raw, fmt)`: HF config dict (fmt "hf") or GGUF metadata with the
      `<arch>.` prefix removed (fmt "gguf") -> the plugin's config object. The object must expose
      `vocab_size`, `max_position_embeddings` and `eos_token_ids` (possibly empty).
    - `weight_mapper(config, fmt)`: returns the `WeightMapper` for that checkpoint naming.
    - `build_model(config)`: returns the `torch.nn.Module` (see `mistralrs.layers.CausalLM`).
    """

    name: str
    parse_config: Callable[[dict[str, Any], CheckpointFormat], Any]
    weight_mapper: Callable[[Any, CheckpointFormat], WeightMapper]
    build_model: Callable[[Any], torch.nn.Module]
    kind: Literal["text", "vision", "diffusion"] = "text"
    hf_architectures: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()
    description: str = ""
    gguf_matches: Callable[[dict[str, Any]], bool] | None = None
    """For a GGUF architecture that several share (llama.cpp writes Llama, Mistral and Mixtral
    all as `llama`): whether a file, by its config view, is this architecture's. An architecture
    whose predicate accepts the file wins over those claiming the name without one."""
    provider: str = field(default="", compare=False)
    """Filled in by the registry: the distribution (or in-process plugin name) that registered it."""
