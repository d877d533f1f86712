"""`Runner`: load a model chosen by `Which` and answer chat and completion requests."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator

import torch

from mistralrs.api.enums import ModelDType
from mistralrs.api.requests import ChatCompletionRequest, CompletionRequest
from mistralrs.api.responses import (
    ChatCompletionChunkResponse,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionChunkChoice,
    CompletionChunkResponse,
    CompletionResponse,
    Delta,
    Logprobs,
    ResponseLogprob,
    ResponseMessage,
    TopLogprob,
    Usage,
)
from mistralrs.api.which import Which
from mistralrs.engine import Engine, RequestHandle, RequestOutput
from mistralrs.engine.sampler import TokenLogprobs
from mistralrs.errors import EngineOptionError, InvalidRequestError
from mistralrs.loading.chat_template import render_chat_template
from mistralrs.loading.hub import hub_token
from mistralrs.loading.model_loader import LoadedModel, load_gguf, load_plain
from mistralrs.plugins import PluginRegistry

SYSTEM_FINGERPRINT = "mistralrs-triton"

_NOT_YET = {
    "XLora": "X-LoRA adapters",
    "Lora": "LoRA adapters",
    "XLoraGGUF": "X-LoRA adapters",
    "LoraGGUF": "LoRA adapters",
    "GGML": "the legacy GGML format (convert the file to GGUF with llama.cpp's tools)",
    "XLoraGGML": "the legacy GGML format",
    "LoraGGML": "the legacy GGML format",
    "VisionPlain": "vision models (the mistralrs-arch-vision plugin)",
    "DiffusionPlain": "diffusion models (the mistralrs-arch-flux plugin)",
}


def load_which(which: Any, chat_template: str | None = None, device: torch.device | None = None,
               registry: PluginRegistry | None = None, progress: bool = True,
               token: str | bool | None = None, revision: str | None = None) -> LoadedModel:
    """Load the model a `Which` variant describes."""
    kind = type(which).__name__
    if kind in _NOT_YET:
        raise NotImplementedError(f"Which.{kind}: {_NOT_YET[kind]} are not supported yet by "
                                  "mistralrs-triton; use Which.Plain or Which.GGUF")
    dtype = ModelDType(which.dtype).torch_dtype()
    if isinstance(which, Which.Plain):
        if which.organization is not None or which.write_uqff or which.calibration_file \
                or which.imatrix or which.topology:
            raise NotImplementedError("in-situ quantization options (organization, write_uqff, "
                                      "calibration_file, imatrix, topology) are not supported yet")
        arch = getattr(which.arch, "value", which.arch)
        return load_plain(which.model_id, arch=arch, dtype=dtype,
                          tokenizer_json=which.tokenizer_json, chat_template=chat_template,
                          device=device, registry=registry, progress=progress, token=token,
                          revision=revision)
    if isinstance(which, Which.GGUF):
        if which.topology:
            raise NotImplementedError("topology is not supported yet")
        return load_gguf(which.quantized_model_id, which.quantized_filename,
                         tok_model_id=which.tok_model_id, dtype=dtype,
                         chat_template=chat_template, device=device, registry=registry,
                         progress=progress, token=token, revision=revision)
    raise TypeError(f"expected a Which variant such as Which.Plain(...), got {which!r}")


def _usage(out: RequestOutput) -> Usage:
    total = max(out.finished - out.submitted, 1e-9)
    prompt_time = max(out.first_token - out.submitted, 1e-9)
    completion_time = max(out.finished - out.first_token, 1e-9)
    return Usage(
        completion_tokens=out.completion_tokens,
        prompt_tokens=out.prompt_tokens,
        total_tokens=out.prompt_tokens + out.completion_tokens,
        avg_tok_per_sec=(out.prompt_tokens + out.completion_tokens) / total,
        avg_prompt_tok_per_sec=out.prompt_tokens / prompt_time,
        avg_compl_tok_per_sec=out.completion_tokens / completion_time,
        total_time_sec=total,
        total_prompt_time_sec=prompt_time,
        total_completion_time_sec=completion_time,
    )


def _check_sizes(**sizes: int | None) -> None:
    """Sizes given must be positive integers: checked before the model loads, not found out
    deep inside the engine after it."""
    for name, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EngineOptionError(f"{name} must be a positive integer, got {value!r}")


class Runner:
    """Loads a model and serves requests on a background engine; safe to call from many threads.

    `max_seqs` bounds the sequences decoded together; `pa_gpu_mem` (MiB) sizes the KV cache
    and `pa_blk_size` its blocks (tokens per block), `pa_cache_type` its dtype ("auto", or
    "int8": 8-bit keys and values on the CPU, half the memory); `prefix_cache_n=0` turns prefix
    caching off; `chat_template` overrides the model's (a literal template or a path to a .jinja/.json
    file); `token_source` is `cache`, `none`, `literal:<token>`, `env:<VAR>` or `path:<file>`;
    `truncate_sequence` keeps the end of a prompt too long for the context (leaving room for
    max_tokens, or 10 tokens) instead of rejecting it; `logfile` appends each request and
    answer to a file as JSON lines."""

    def __init__(self, which: Any, max_seqs: int = 16, chat_template: str | None = None,
                 pa_gpu_mem: int | None = None, pa_blk_size: int | None = None,
                 pa_cache_type: str = "auto", no_kv_cache: bool = False,
                 prefix_cache_n: int = 16, token_source: str = "cache",
                 repeat_last_n: int = 64, device: str | None = None,
                 truncate_sequence: bool = False, logfile: str | None = None,
                 revision: str | None = None, registry: PluginRegistry | None = None,
                 progress: bool = True, **unsupported):
        if unsupported:
            raise NotImplementedError(f"Runner options not supported yet: {', '.join(unsupported)}")
        _check_sizes(max_seqs=max_seqs, pa_gpu_mem=pa_gpu_mem, pa_blk_size=pa_blk_size)
        if no_kv_cache:
            raise NotImplementedError("no_kv_cache=True is not supported: the paged KV cache is "
                                      "always on")
        kind, _, value = token_source.partition(":")
        self.loaded = load_which(which, chat_template=chat_template,
                                 device=torch.device(device) if device else None,
                                 registry=registry, progress=progress,
                                 token=hub_token(kind, value or None), revision=revision)
        self.tokenizer = self.loaded.tokenizer
        self.repeat_last_n = repeat_last_n
        self.truncate_sequence = truncate_sequence
        self.logfile = logfile
        self.engine = Engine(self.loaded, max_seqs=max_seqs,
                             kv_cache_bytes=None if pa_gpu_mem is None else pa_gpu_mem * 2**20,
                             block_size=32 if pa_blk_size is None else pa_blk_size,
                             enable_prefix_caching=prefix_cache_n > 0,
                             kv_cache_dtype=pa_cache_type)

    # -- prompts -------------------------------------------------------------------------------
    def chat_prompt_ids(self, messages: list[dict[str, Any]] | str) -> list[int]:
        if isinstance(messages, str):
            return self.tokenizer.encode(messages, add_special_tokens=True)
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidRequestError("messages must be a list of {'role', 'content'} objects "
                                      "or a string")
        text = render_chat_template(self.tokenizer.chat_template, [_text_message(m) for m in messages],
                                    add_generation_prompt=True,
                                    bos_token=self.tokenizer.bos_token,
                                    eos_token=self.tokenizer.eos_token)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def completion_prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return [int(t) for t in prompt]
        if not isinstance(prompt, str):
            raise InvalidRequestError("prompt must be a string or a list of token ids")
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def _submit(self, prompt_ids: list[int], request) -> tuple[RequestHandle, list[int]]:
        params = request.sampling_params(self.repeat_last_n)
        room = self.engine.max_context - (params.max_tokens or 10)
        if self.truncate_sequence and len(prompt_ids) > room > 0:
            prompt_ids = prompt_ids[-room:]
        return self.engine.submit(prompt_ids, params), prompt_ids

    def _log(self, request, prompt_ids: list[int], response) -> None:
        if self.logfile:
            with open(self.logfile, "a", encoding="utf-8") as f:
                f.write(json.dumps({"prompt": self.tokenizer.decode(prompt_ids),
                                    "request": {k: v for k, v in vars(request).items()
                                                if _jsonable(v)},
                                    "response": response.to_dict()}) + "\n")

    # -- requests ------------------------------------------------------------------------------
    def send_chat_completion_request(self, request: ChatCompletionRequest):
        handle, prompt_ids = self._submit(self.chat_prompt_ids(request.messages), request)
        if request.stream:
            return self._chat_stream(handle, request)
        out = handle.result()
        choices = [Choice(c.finish_reason, c.index, ResponseMessage(c.text),
                          self._chat_logprobs(c.logprobs) if request.logprobs else None)
                   for c in out.choices]
        response = ChatCompletionResponse(_id("chatcmpl"), choices, int(time.time()),
                                          request.model, SYSTEM_FINGERPRINT, "chat.completion",
                                          _usage(out))
        self._log(request, prompt_ids, response)
        return response

    def send_completion_request(self, request: CompletionRequest):
        handle, prompt_ids = self._submit(self.completion_prompt_ids(request.prompt), request)
        prefix = self.tokenizer.decode(prompt_ids) if request.echo_prompt else ""
        if request.stream:
            return self._completion_stream(handle, request, prefix)
        out = handle.result()
        choices = [CompletionChoice(c.finish_reason, c.index, prefix + c.text,
                                    self._chat_logprobs(c.logprobs) if request.logprobs else None)
                   for c in out.choices]
        response = CompletionResponse(_id("cmpl"), choices, int(time.time()), request.model,
                                      SYSTEM_FINGERPRINT, "text_completion", _usage(out))
        self._log(request, prompt_ids, response)
        return response

    def _chat_stream(self, handle: RequestHandle, request) -> Iterator[ChatCompletionChunkResponse]:
        rid, created = _id("chatcmpl"), int(time.time())
        out = RequestOutput([], handle.prompt_tokens, 0, handle.submitted, 0.0, 0.0)
        for delta in handle:
            out.completion_tokens += delta.token_id is not None
            logprobs = self._chat_logprobs([(delta.token_id, delta.logprobs)]) \
                if request.logprobs and delta.logprobs else None
            yield ChatCompletionChunkResponse(
                rid, [ChunkChoice(delta.choice, Delta(delta.text), delta.finish_reason, logprobs)],
                created, request.model, SYSTEM_FINGERPRINT)
        out.first_token, out.finished = handle.first_token or handle.finished, handle.finished
        yield ChatCompletionChunkResponse(rid, [], created, request.model, SYSTEM_FINGERPRINT,
                                          usage=_usage(out))

    def _completion_stream(self, handle: RequestHandle, request,
                           prefix: str) -> Iterator[CompletionChunkResponse]:
        rid, created = _id("cmpl"), int(time.time())
        out = RequestOutput([], handle.prompt_tokens, 0, handle.submitted, 0.0, 0.0)
        if prefix:
            yield CompletionChunkResponse(rid, [CompletionChunkChoice(i, prefix)
                                                for i in range(handle.n)],
                                          created, request.model, SYSTEM_FINGERPRINT)
        for delta in handle:
            out.completion_tokens += delta.token_id is not None
            yield CompletionChunkResponse(
                rid, [CompletionChunkChoice(delta.choice, delta.text, delta.finish_reason)],
                created, request.model, SYSTEM_FINGERPRINT)
        out.first_token, out.finished = handle.first_token or handle.finished, handle.finished
        yield CompletionChunkResponse(rid, [], created, request.model, SYSTEM_FINGERPRINT,
                                      usage=_usage(out))

    def _chat_logprobs(self, entries: list[tuple[int, TokenLogprobs]]) -> Logprobs:
        tok = self.tokenizer
        content = []
        for token_id, lp in entries:
            raw = tok.token_bytes(token_id)
            tops = [TopLogprob(t, v, tok.token_bytes(t).decode("utf-8", "replace"))
                    for t, v in zip(lp.top_ids, lp.top_logprobs)]
            content.append(ResponseLogprob(raw.decode("utf-8", "replace"), lp.logprob, list(raw),
                                           tops))
        return Logprobs(content)

    def shutdown(self) -> None:
        self.engine.shutdown()


def _text_message(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI allows content as a list of parts; text-only models get the text parts joined."""
    content = message.get("content")
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return {**message, "content": "".join(parts)}
    if "role" not in message:
        raise InvalidRequestError("every message needs a role")
    return message


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
