"""mistralrs-triton: the mistral.rs inference engine in Python on Triton kernels.

    from mistralrs import Runner, Which, ChatCompletionRequest
"""
from mistralrs.api.enums import (
    Architecture,
    DiffusionArchitecture,
    IsqOrganization,
    ModelDType,
    VisionArchitecture,
)
from mistralrs.api.legacy import (
    GemmaLoader,
    LlamaLoader,
    MistralLoader,
    MixtralLoader,
    ModelKind,
    NormalLoader,
    QuantizedLoader,
    XLoraLoader,
    XLoraQuantizedLoader,
)
from mistralrs.api.requests import ChatCompletionRequest, CompletionRequest, Request
from mistralrs.api.responses import (
    ChatCompletionChunkResponse,
    ChatCompletionResponse,
    CompletionChunkResponse,
    CompletionResponse,
    Usage,
)
from mistralrs.api.runner import Runner
from mistralrs.api.which import Which
from mistralrs.errors import (
    ArchitectureNotFoundError,
    ChatTemplateError,
    DuplicateArchitectureError,
    InvalidRequestError,
    MistralRsError,
    ModelFormatError,
    ModelNotFoundError,
    TokenizerError,
)

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "GemmaLoader",
    "LlamaLoader",
    "MistralLoader",
    "MixtralLoader",
    "ModelKind",
    "NormalLoader",
    "QuantizedLoader",
    "Request",
    "XLoraLoader",
    "XLoraQuantizedLoader",
    "ArchitectureNotFoundError",
    "ChatCompletionChunkResponse",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatTemplateError",
    "CompletionChunkResponse",
    "CompletionRequest",
    "CompletionResponse",
    "DiffusionArchitecture",
    "DuplicateArchitectureError",
    "InvalidRequestError",
    "IsqOrganization",
    "MistralRsError",
    "ModelDType",
    "ModelFormatError",
    "ModelNotFoundError",
    "Runner",
    "TokenizerError",
    "Usage",
    "VisionArchitecture",
    "Which",
]
