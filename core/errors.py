"""The exceptions mistralrs raises on bad input.

Every error a user can cause (a wrong path, a malformed file, a missing plugin, an invalid
request) is one of these, with a message that says what to do; anything else escaping is a bug.
"""


class MistralRsError(Exception):
    """Base class of every error mistralrs raises on purpose."""


class ModelNotFoundError(MistralRsError, FileNotFoundError):
    """A model id that is neither a local path nor reachable on the Hugging Face hub."""


class ModelFormatError(MistralRsError, ValueError):
    """A checkpoint, config or GGUF file that cannot be read: truncated, malformed or hostile."""


class TokenizerError(MistralRsError, ValueError):
    """A tokenizer that is missing or cannot be built."""


class ChatTemplateError(MistralRsError, ValueError):
    """A chat template that is missing, fails to render or raises through `raise_exception`."""


class ArchitectureNotFoundError(MistralRsError, LookupError):
    """No installed plugin provides the architecture a model needs."""


class DuplicateArchitectureError(MistralRsError):
    """Two installed plugins claim the same architecture name."""


class InvalidRequestError(MistralRsError, ValueError):
    """A request whose fields are out of range or inconsistent."""


class EngineOptionError(MistralRsError, ValueError):
    """An engine option that is unknown or that the model or device cannot take."""
