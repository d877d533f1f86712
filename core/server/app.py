"""The OpenAI-compatible HTTP app (FastAPI) over one `Runner`."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import PlainTextResponse, Response
from fastapi_offline import FastAPIOffline

import mistralrs
from mistralrs.api.responses import (
    ChatCompletionChunkResponse,
    ChatCompletionResponse,
    CompletionChunkResponse,
    CompletionResponse,
)
from mistralrs.api.runner import Runner
from mistralrs.server.auth import bearer_auth
from mistralrs.server.config import ServerConfig
from mistralrs.server.errors import APIError, install_error_handlers
from mistralrs.server.limits import Admission, BodySizeLimit
from mistralrs.server.metrics import CONTENT_TYPE, RequestMetrics, ServerMetrics
from mistralrs.server.openapi import document_stream_chunks, streamed_response
from mistralrs.server.schemas import (
    ChatCompletionBody,
    CompletionBody,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from mistralrs.server.streaming import BackgroundIterator, EventStreamResponse, server_sent_events

_GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid request"},
    404: {"model": ErrorResponse, "description": "unknown model (with --served-model-name)"},
    413: {"model": ErrorResponse, "description": "request body over the size limit"},
    429: {"model": ErrorResponse, "description": "too many requests in flight; retry"},
    "default": {"model": ErrorResponse, "description": "server error"},
}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
}


def create_app(runner: Runner, config: ServerConfig) -> FastAPI:
    """The app serving `runner`; the caller keeps ownership of the runner (and shuts it down)."""
    app = FastAPIOffline(
        title="mistralrs-triton", version=mistralrs.__version__, redoc_url=None,
        description="OpenAI-compatible API of mistralrs-triton: a superset of OpenAI's chat "
                    "and completions requests and responses, as mistral.rs serves them.",
        swagger_ui_parameters={"validatorUrl": None})  # no call to the online validator
    install_error_handlers(app)
    admission = Admission(config.max_concurrent_requests)
    metrics = ServerMetrics(runner.engine.stats, lambda: admission.in_flight)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    blocking_calls = anyio.CapacityLimiter(config.max_concurrent_requests)
    created = int(time.time())

    def max_tokens_for(body: ChatCompletionBody | CompletionBody) -> int | None:
        requested, limit = body.requested_max_tokens(), config.max_tokens_limit
        if limit is None or requested is None:
            return requested if limit is None else limit
        if requested > limit:
            raise APIError(400, f"max_tokens is {requested}, but this server generates at most "
                                f"{limit} tokens per request", param="max_tokens")
        return requested

    async def generate(body: ChatCompletionBody | CompletionBody, send: Callable[[Any], Any]):
        if config.check_model_name and body.model not in ("", config.model_name):
            raise APIError(404, f"the model `{body.model}` does not exist; this server serves "
                                f"`{config.model_name}`", param="model", code="model_not_found")
        request = body.to_request(config.model_name, max_tokens_for(body))
        admission.enter()
        if not body.stream:
            try:
                response = await anyio.to_thread.run_sync(send, request, limiter=blocking_calls)
            finally:
                admission.leave()
            metrics.observe_usage(response.usage)
            return response
        try:
            chunks = await anyio.to_thread.run_sync(send, request, limiter=blocking_calls)
        except BaseException:
            admission.leave()
            raise
        source = BackgroundIterator(chunks)

        def render(chunk) -> dict[str, Any] | None:
            if chunk.choices:
                return chunk.to_dict()
            metrics.observe_usage(chunk.usage)  # the Runner's closing chunk: usage, no choices
            return chunk.to_dict() if body.include_usage else None

        def on_close() -> None:
            source.stop()
            admission.leave()

        return EventStreamResponse(server_sent_events(source, config.keep_alive_seconds, render),
                                   on_close)

    auth = [Depends(bearer_auth(config.api_key))] if config.api_key else []
    v1 = APIRouter(prefix="/v1", dependencies=auth, responses=_AUTH_ERRORS if auth else {})

    @v1.post("/chat/completions", response_model=ChatCompletionResponse,
             responses={**streamed_response("a chat.completion, or with `stream` server-sent "
                                            "events ending with `data: [DONE]`",
                                            ChatCompletionChunkResponse),
                        **_GENERATION_ERRORS})
    async def chat_completions(body: ChatCompletionBody):
        return await generate(body, runner.send_chat_completion_request)

    @v1.post("/completions", response_model=CompletionResponse,
             responses={**streamed_response("a text_completion, or with `stream` server-sent "
                                            "events ending with `data: [DONE]`",
                                            CompletionChunkResponse),
                        **_GENERATION_ERRORS})
    async def completions(body: CompletionBody):
        return await generate(body, runner.send_completion_request)

    @v1.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=config.model_name, created=created)])

    app.include_router(v1)
    document_stream_chunks(app, [ChatCompletionChunkResponse, CompletionChunkResponse])

    @app.get("/health", response_class=PlainTextResponse, summary="Health")
    @app.get("/", response_class=PlainTextResponse, summary="Health", operation_id="root_health")
    async def health() -> str:
        return "OK"

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
