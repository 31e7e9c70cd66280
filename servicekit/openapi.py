"""The API contract's machinery: error bodies, documented statuses, operation ids, schema edits.

A route documents every status it can answer in one line::

    @router.post("/chat/", response_model=ChatReply, summary="Chat", responses=responses(400, 413, 422, 429))

Each status brings its body schema (`ErrorBody`, or `ValidationErrorBody` for 422), a default
description, and the headers it carries (`Retry-After`, `WWW-Authenticate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from .validation import KEY_PATTERN

Schema = dict[str, Any]
SchemaEdit = Callable[[Schema], None]


class ErrorBody(BaseModel):
    """Every error except 422: one human-readable sentence."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "Request body too large"}]})

    detail: str = Field(description="What went wrong, in words")


class ValidationIssue(BaseModel):
    """One rule the request broke. The offending input is never echoed back."""

    loc: list[str | int] = Field(description='Where: ["body", "user_id"], ["path", "user_id"], ["query", "role"], ...')
    msg: str = Field(description="The rule, in words")
    type: str = Field(description="A stable machine-readable kind, e.g. string_pattern_mismatch, missing, json_invalid")


class ValidationErrorBody(BaseModel):
    """422: the request broke the schema (a body that is not JSON included)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]}]}
    )

    detail: list[ValidationIssue]


_RETRY_AFTER = {"description": "Seconds to wait before retrying (or an HTTP date)", "schema": {"type": "string"}}
_WWW_AUTHENTICATE = {"description": "The scheme to authenticate with: Bearer", "schema": {"type": "string"}}

# status: (default description, extra headers)
_STATUSES: dict[int, tuple[str, dict[str, Schema]]] = {
    400: ("Bad request", {}),
    401: ("Missing or invalid bearer token", {"WWW-Authenticate": _WWW_AUTHENTICATE}),
    403: ("The credentials do not allow this", {}),
    404: ("Not found", {}),
    409: ("Conflicts with the current state (e.g. an idempotency key reused for a different request)", {}),
    413: ("Request body too large", {}),
    422: ("Invalid request: a body that is not UTF-8 JSON, a value that breaks its rule, or an unknown field", {}),
    429: ("Too many requests; retry after Retry-After", {"Retry-After": _RETRY_AFTER}),
    502: ("An upstream answered something unusable", {}),
    503: ("Temporarily unavailable; retry after Retry-After when given", {"Retry-After": _RETRY_AFTER}),
    504: ("An upstream did not answer in time", {}),
}


def responses(
    *statuses: int,
    descriptions: Mapping[int, str] | None = None,
    models: Mapping[int, type[BaseModel]] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status with its body schema, description and headers."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _STATUSES[status]
        entry: dict[str, Any] = {
            "model": (models or {}).get(status, ValidationErrorBody if status == 422 else ErrorBody),
            "description": (descriptions or {}).get(status, description),
        }
        if headers:
            entry["headers"] = headers
        documented[status] = entry
    return documented


class EventStreamResponse(StreamingResponse):
    """A streamed `text/event-stream` body; as a route's `response_class`, its 200 is documented as SSE only."""

    media_type = "text/event-stream"


def event_stream(
    description: str, events: Mapping[str, str], data: Mapping[str, Schema] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A 200 documented as `text/event-stream`, listing each event type (`event:` name -> meaning).

    With `data` (event name -> JSON schema of its `data:` line, parsed as JSON), the schema
    describes each event as OpenAPI < 3.2 reads an event stream's schema, one event at a time:
    `{"event": name, "data": "<JSON>"}`, the JSON checked with contentMediaType/contentSchema.
    Pair it with `response_class=EventStreamResponse` (or sse-starlette's `EventSourceResponse`).
    """
    listed = "\n".join(f"- `{name}`: {meaning}" for name, meaning in events.items())
    schema: Schema = {"type": "string", "x-event-types": list(events)}
    if data is not None:
        schema = {
            "type": "object",
            "required": ["event", "data"],
            "oneOf": [
                {
                    "properties": {
                        "event": {"const": name},
                        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data[name]},
                    }
                }
                for name in events
            ],
            "x-event-types": list(events),
        }
    return {
        200: {
            "description": f"{description}\n\nEvents:\n{listed}",
            "content": {"text/event-stream": {"schema": schema}},
        }
    }


def as_json(documented: Mapping[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """`responses(...)` for a route whose own answer is not JSON (an event stream): errors stay JSON.

    FastAPI documents a `model` under the route's media type; this names the media type instead.
    """
    pinned: dict[int | str, dict[str, Any]] = {}
    for status, entry in documented.items():
        entry = dict(entry)
        model = entry.pop("model", None)
        if model is not None:
            entry["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        pinned[status] = entry
    return pinned


# Replaying a request with the same key returns the first answer instead of doing the work twice.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN,
        description="Makes a retried request safe: the same key within its lifetime returns the first answer",
    ),
]


def operation_id(route: APIRoute) -> str:
    """Name operations after their route functions (`chat`, `get_user`), not FastAPI's path mash."""
    return route.name


def edit_openapi(app: FastAPI, *edits: SchemaEdit) -> None:
    """Apply `edits` to the generated schema once, then serve the edited schema from cache."""
    build = app.openapi

    def openapi() -> Schema:
        if app.openapi_schema is None:
            schema = build()
            for edit in edits:
                edit(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def bearer_auth(scheme: str = "bearerAuth", description: str = "Authorization: Bearer <token>") -> SchemaEdit:
    """Declare HTTP bearer auth on every operation that documents a 401."""

    def edit(schema: Schema) -> None:
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[scheme] = {"type": "http", "scheme": "bearer", "description": description}
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if "401" in operation.get("responses", {}):
                    operation.setdefault("security", []).append({scheme: []})

    return edit


def set_max_length(component: str, field: str, limit: int) -> SchemaEdit:
    """State a configured cap (a setting, not the model's hard ceiling) in the schema."""

    def edit(schema: Schema) -> None:
        schema["components"]["schemas"][component]["properties"][field]["maxLength"] = limit

    return edit
