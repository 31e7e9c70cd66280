"""The contract machinery other routes document themselves with: one line per route."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.testclient import TestClient

from servicekit.errors import install_error_handlers
from servicekit.openapi import (
    EventStreamResponse,
    IdempotencyKey,
    as_json,
    bearer_auth,
    edit_openapi,
    event_stream,
    operation_id,
    responses,
)


def build() -> FastAPI:
    app = FastAPI(generate_unique_id_function=operation_id)
    install_error_handlers(app)

    @app.post("/things", summary="Make a thing", responses=responses(401, 409, 422, descriptions={409: "Key reused"}))
    async def make_thing(key: IdempotencyKey = None) -> dict[str, str | None]:
        """Make one."""
        return {"key": key}

    events = {"thing": "one thing", "done": "the end"}

    @app.get("/things/stream", response_class=EventStreamResponse, responses=event_stream("Things as they come", events))
    async def stream_things() -> EventStreamResponse:
        """Stream them."""

        async def lines() -> AsyncIterator[str]:
            yield "event: thing\ndata: {}\n\n"
            yield "event: done\ndata: {}\n\n"

        return EventStreamResponse(lines())

    edit_openapi(app, bearer_auth())
    return app


def test_statuses_bring_their_bodies_descriptions_and_headers():
    operation = build().openapi()["paths"]["/things"]["post"]
    assert operation["operationId"] == "make_thing"
    documented = operation["responses"]
    assert documented["409"]["description"] == "Key reused"
    assert documented["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert documented["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ValidationErrorBody"}
    assert "WWW-Authenticate" in documented["401"]["headers"]
    assert operation["security"] == [{"bearerAuth": []}]


def test_the_idempotency_key_header_is_documented_and_validated():
    app = build()
    [header] = app.openapi()["paths"]["/things"]["post"]["parameters"]
    assert header["name"] == "Idempotency-Key" and header["in"] == "header" and not header["required"]
    client = TestClient(app)
    assert client.post("/things", headers={"Idempotency-Key": "k-1"}).json() == {"key": "k-1"}
    refused = client.post("/things", headers={"Idempotency-Key": "has spaces"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_an_event_stream_lists_its_event_types():
    operation = build().openapi()["paths"]["/things/stream"]["get"]
    ok = operation["responses"]["200"]
    assert list(ok["content"]) == ["text/event-stream"]
    assert ok["content"]["text/event-stream"]["schema"]["x-event-types"] == ["thing", "done"]
    assert "- `done`: the end" in ok["description"]
    assert "security" not in operation, "only operations that document 401 need the bearer token"


def test_an_event_stream_streams_as_documented():
    with TestClient(build()).stream("GET", "/things/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert [line for line in response.iter_lines() if line.startswith("event:")] == ["event: thing", "event: done"]


def test_an_event_stream_can_document_each_event_s_json_data():
    events = {"thing": "one thing", "done": "the end"}
    [ok] = event_stream("Things", events, data={"thing": {"type": "object"}, "done": {"type": "null"}}).values()
    schema = ok["content"]["text/event-stream"]["schema"]
    assert schema["x-event-types"] == ["thing", "done"] and schema["required"] == ["event", "data"]
    assert [branch["properties"]["event"] for branch in schema["oneOf"]] == [{"const": "thing"}, {"const": "done"}]
    assert schema["oneOf"][1]["properties"]["data"]["contentSchema"] == {"type": "null"}


def test_errors_of_an_event_stream_route_stay_json():
    documented = as_json(responses(400, 422))
    assert documented[400]["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    assert documented[422]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrorBody")
    assert "model" not in documented[400] and documented[400]["description"] == "Bad request"
