"""What FastAPI cannot infer for the OpenAPI document: the server-sent events of streamed
answers, each `data:` a JSON chunk (or an error) and the last one `[DONE]`."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import TypeAdapter

_COMPONENTS = "#/components/schemas/"


def streamed_response(description: str, chunk_type: type) -> dict[int, dict[str, Any]]:
    """The 200 answer's `text/event-stream` content, for a route's `responses=`; its `schema`
    describes one event, as schemathesis and Open API before 3.2 read it. The chunk's own schema
    is added to the components by `document_stream_chunks`."""
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"anyOf": [
            {"const": "[DONE]", "description": "the last event"},
            {"type": "string", "contentMediaType": "application/json",
             "contentSchema": {"anyOf": [{"$ref": _COMPONENTS + chunk_type.__name__},
                                         {"$ref": _COMPONENTS + "ErrorResponse"}]}},
        ]}},
    }
    return {200: {"description": description,
                  "content": {"text/event-stream": {"schema": event}}}}


def document_stream_chunks(app: FastAPI, chunk_types: list[type]) -> None:
    """Make `app.openapi()` include the schemas of `chunk_types` (and of what they contain)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            _, definitions = TypeAdapter.json_schemas(
                [(t, "serialization", TypeAdapter(t)) for t in chunk_types],
                ref_template=_COMPONENTS + "{model}")
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in definitions.get("$defs", {}).items():
                schemas.setdefault(name, schema)
        return app.openapi_schema

    app.openapi = openapi
