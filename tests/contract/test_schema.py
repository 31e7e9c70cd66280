"""The contract itself: frozen in a snapshot, and held to rules every route must follow."""

from __future__ import annotations

import difflib

import pytest

from analytics_service.core.config import Settings as AnalyticsSettings
from analytics_service.main import create_app as create_analytics
from tests.contract.snapshot import current_schemas, render, snapshot_path

SCHEMAS = current_schemas()
# Names generated clients define for themselves (openapi-python-client's types.py and client.py).
RESERVED_NAMES = {"Response", "Client", "AuthenticatedClient", "File", "Unset", "Errors"}


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


@pytest.mark.parametrize("service", sorted(SCHEMAS))
def test_the_schema_matches_its_snapshot(service):
    expected = snapshot_path(service).read_text()
    actual = render(SCHEMAS[service])
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "snapshot", "current"))
        pytest.fail(
            f"The {service} API contract changed. If the change is intended, review it and run "
            f"`uv run python -m tests.contract.snapshot`, then commit the snapshot with the change.\n\n{diff}",
            pytrace=False,
        )


@pytest.mark.parametrize("service", sorted(SCHEMAS))
def test_every_operation_is_named_tagged_and_described(service):
    ids = []
    for label, operation in operations(SCHEMAS[service]):
        ids.append(operation["operationId"])
        assert operation["operationId"].isidentifier(), label
        assert operation.get("tags"), f"{label} has no tag"
        assert operation.get("summary") and operation.get("description"), f"{label} needs a summary and a description"
    assert len(ids) == len(set(ids)), "operation ids are unique"


@pytest.mark.parametrize("service", sorted(SCHEMAS))
def test_every_error_status_documents_its_json_body(service):
    for label, operation in operations(SCHEMAS[service]):
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            expected = (
                "ValidationErrorBody"
                if status == "422"
                else ("Readiness" if status == "503" and "readyz" in label else "ErrorBody")
            )
            assert ref == f"#/components/schemas/{expected}", (label, status)
            if status in ("429", "503") and "readyz" not in label:
                assert "Retry-After" in response["headers"], (label, status)


@pytest.mark.parametrize("service", sorted(SCHEMAS))
def test_schema_names_do_not_collide_with_generated_clients(service):
    names = set(SCHEMAS[service]["components"]["schemas"])
    assert not names & RESERVED_NAMES
    assert "HTTPValidationError" not in names, "every route with input documents 422 with responses(422)"


def test_chat_keeps_the_tutorials_json_under_clean_names():
    schemas = SCHEMAS["chat"]["components"]["schemas"]
    assert set(schemas["ChatMessage"]["properties"]) == {"user_id", "text", "metadata", "tags"}
    assert set(schemas["ChatReply"]["properties"]) == {"user_id", "reply", "metadata"}
    chat = SCHEMAS["chat"]["paths"]["/chat/"]["post"]
    assert chat["operationId"] == "chat"
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ChatMessage"
    assert sorted(chat["responses"]) == ["200", "400", "401", "403", "409", "413", "422", "429", "502", "503", "504"]


def test_timestamps_are_documented_as_strings_only():
    chat = SCHEMAS["chat"]["components"]["schemas"]["Metadata"]["properties"]["timestamp"]
    record = SCHEMAS["analytics"]["components"]["schemas"]["RecordMessage"]["properties"]["timestamp"]
    for stamp in (chat, record):
        assert stamp["type"] == "string" and stamp["format"] == "date-time"


def test_the_bearer_scheme_is_declared_only_where_a_token_is_enforced():
    assert "securitySchemes" not in SCHEMAS["analytics"]["components"]
    guarded = create_analytics(AnalyticsSettings(api_token="s3cret")).openapi()
    assert guarded["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <ANALYTICS_API_TOKEN>",
    }
    secured = {label for label, operation in operations(guarded) if operation.get("security") == [{"bearerAuth": []}]}
    assert secured == {"GET /analytics/{user_id}", "POST /analytics/{user_id}/messages", "POST /messages/batch"}
    assert "s3cret" not in render(guarded)
