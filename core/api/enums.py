"""The enums of the seed Python API."""
from __future__ import annotations

import enum

import torch


class Architecture(str, enum.Enum):
    """Text architectures (value = name, as plugins register them)."""

    Mistral = "Mistral"
    Gemma = "Gemma"
    Mixtral = "Mixtral"
    Llama = "Llama"
    Phi2 = "Phi2"
    Phi3 = "Phi3"
    Qwen2 = "Qwen2"
    Gemma2 = "Gemma2"
    Starcoder2 = "Starcoder2"
    Phi3_5MoE = "Phi3_5MoE"
    DeepseekV2 = "DeepseekV2"
    DeepseekV3 = "DeepseekV3"
    # Beyond the seed: architectures users expect that mistral.rs added later.
    Gemma3 = "Gemma3"
    Qwen3 = "Qwen3"


class VisionArchitecture(str, enum.Enum):
    Phi3V = "Phi3V"
    Idefics2 = "Idefics2"
    LLaVaNext = "LLaVaNext"
    LLaVa = "LLaVa"
    VLlama = "VLlama"
    Qwen2VL = "Qwen2VL"
    Idefics3 = "Idefics3"
    MiniCpmO = "MiniCpmO"
    Phi4MM = "Phi4MM"


class DiffusionArchitecture(str, enum.Enum):
    Flux = "Flux"
    FluxOffloaded = "FluxOffloaded"


class IsqOrganization(str, enum.Enum):
    Default = "Default"
    MoQE = "MoQE"


class ModelDType(str, enum.Enum):
    Auto = "Auto"
    F32 = "F32"
    BF16 = "BF16"
    F16 = "F16"

    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype, or None for Auto (the loader picks per device)."""
        return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(self.value)
