"""Every error answer in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
its status: 400 for invalid requests (malformed bodies included, as OpenAI does), 401, 404,
413, 429, and 500 only for bugs."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mistralrs.errors import ChatTemplateError, InvalidRequestError, MistralRsError

log = logging.getLogger(__name__)

_MAX_LISTED = 5
"""Validation problems listed in one message (a bad union value reports one per variant)."""


class APIError(Exception):
    """An error answer that a route raises."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code,
                              self.headers)


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status,
                        headers=headers)


def _input_path(body: Any, loc: tuple) -> str:
    """The dotted path of an error in the request body. pydantic's `loc` also names the union
    member it tried (`stop.list[constrained-str].0`); those parts are not in the input, so
    following the input keeps only real keys and indices (and a missing or unknown key last)."""
    parts, node = [], body
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (isinstance(node, dict) and i == len(loc) - 1):
            continue
        parts.append(str(part))
    return ".".join(parts)


def _describe(error: dict[str, Any], body: Any) -> tuple[str, str]:
    """(dotted field path, sentence) for one pydantic error."""
    path = _input_path(body, error["loc"][1:])  # drop the leading "body"
    if error["type"] == "extra_forbidden":
        return path, f"`{path}` is not supported by this server"
    if error["type"] == "json_invalid":
        return path, f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')})"
    if error["type"] == "missing":
        return path, f"`{path}` is required"
    return path, f"{path or 'body'}: {error['msg']}"


def _closest(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A value matching no member of a union gets one error per member; of those, keep the
    ones that got deepest into the value (the member the client most likely meant)."""
    depth: dict[Any, int] = {}
    for e in errors:
        field = e["loc"][:2]
        depth[field] = max(depth.get(field, 0), len(e["loc"]))
    return [e for e in errors if len(e["loc"]) == depth[e["loc"][:2]]]


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _closest(list(exc.errors()))
    described = list(dict.fromkeys(_describe(e, exc.body) for e in errors))
    message = "; ".join(sentence for _, sentence in described[:_MAX_LISTED])
    if len(described) > _MAX_LISTED:
        message += f"; and {len(described) - _MAX_LISTED} more"
    param = described[0][0] if described else ""
    return error_response(400, message or "invalid request body", param=param or None)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        exc.status_code)
    return error_response(exc.status_code, str(exc.detail), code=code,
                          headers=getattr(exc, "headers", None))


async def _engine_error(request: Request, exc: MistralRsError) -> JSONResponse:
    if isinstance(exc, (InvalidRequestError, ChatTemplateError)):
        return error_response(400, str(exc))
    log.error("request failed: %s", exc)
    return error_response(500, str(exc), "server_error")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return error_response(500, "internal server error", "server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(MistralRsError, _engine_error)
    app.add_exception_handler(Exception, _unexpected_error)

