"""Resolving a model id to local files: a local path, or a Hugging Face hub repository."""
from __future__ import annotations

import os
from pathlib import Path

from mistralrs.errors import ModelNotFoundError


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _looks_like_path(model_id: str) -> bool:
    """Hub ids look like `org/name`; anything else is meant as a local path."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") != 1


def hub_token(token_source: str = "cache", value: str | None = None) -> str | bool | None:
    """The Hugging Face token as mistral.rs's `token_source` names it: `cache` (the token
    `huggingface-cli login` saved), `literal` (value is the token), `env` (value names an
    environment variable, default HF_TOKEN), `path` (value is a file holding it), `none`."""
    if token_source == "cache":
        return None
    if token_source == "none":
        return False
    if token_source == "literal" and value:
        return value
    if token_source == "env":
        return os.environ.get(value or "HF_TOKEN")
    if token_source == "path" and value:
        try:
            return Path(value).expanduser().read_text().strip()
        except OSError as e:
            raise ModelNotFoundError(f"cannot read the token file {value}: {e}") from None
    raise ValueError(f"token_source must be cache, literal, env, path or none (with a value for "
                     f"literal and path), got {token_source!r}")


def resolve_dir(model_id: str, revision: str | None = None,
                allow_patterns: list[str] | None = None, token: str | bool | None = None) -> Path:
    """A local directory, or a hub repo downloaded (or found in the local cache) as a snapshot."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{model_id} is a file; expected a model directory or hub id")
    if _looks_like_path(model_id):
        raise ModelNotFoundError(f"model directory {model_id!r} does not exist")
    return _download(model_id, revision, allow_patterns=allow_patterns, token=token)


def resolve_file(model_id: str, filename: str, revision: str | None = None,
                 token: str | bool | None = None) -> Path:
    """`filename` inside a local directory or hub repo; a local file path is taken as is."""
    path = Path(model_id).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / filename
        if not candidate.is_file():
            raise ModelNotFoundError(f"{filename!r} not found in {model_id}")
        return candidate
    if _looks_like_path(model_id):
        raise ModelNotFoundError(f"model path {model_id!r} does not exist")
    return _download(model_id, revision, filename=filename, token=token)


def _download(repo_id: str, revision: str | None, *, filename: str | None = None,
              allow_patterns: list[str] | None = None, token: str | bool | None = None) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    what = f"{filename!r} of {repo_id!r}" if filename else repr(repo_id)
    try:
        if filename:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision,
                                                        token=token))
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                      allow_patterns=allow_patterns, token=token))
    except LocalEntryNotFoundError:
        reason = ("HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
                  if _offline() else
                  "it is not in the local Hugging Face cache and the hub cannot be reached")
        raise ModelNotFoundError(
            f"cannot load {what}: {reason}. Pass a local directory or file instead, or "
            "download it first where the hub is reachable") from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(f"cannot download {what} from the Hugging Face hub: {e}") from None
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load {what}: {e}") from None
