"""The rules the schema states, as both services enforce them (in process)."""

from __future__ import annotations

import pytest

from servicekit.validation import USER_ID_RULE

TS = "2025-04-06T12:00:00Z"
RULE_IN_WORDS = f"A user id is {USER_ID_RULE}"


@pytest.mark.parametrize("user_id", ["..", "a/b", "x" * 65, "日本", ""])
async def test_a_bad_user_id_is_explained_in_words_by_chat(chat, user_id):
    body = await chat.post("/chat/", json={"user_id": user_id, "text": "hi"})
    assert body.status_code == 422
    assert body.json()["detail"] == [{"loc": ["body", "user_id"], "msg": RULE_IN_WORDS, "type": "string_pattern_mismatch"}]
    if user_id not in ("", "a/b", ".."):  # those address another route, or none
        path = await chat.get(f"/users/{user_id}/analytics")
        assert path.json()["detail"] == [{"loc": ["path", "user_id"], "msg": RULE_IN_WORDS, "type": "string_pattern_mismatch"}]


async def test_a_bad_user_id_is_explained_in_words_by_analytics(analytics):
    path = await analytics.get("/analytics/%2E%2E")
    assert path.status_code == 422
    assert path.json()["detail"] == [{"loc": ["path", "user_id"], "msg": RULE_IN_WORDS, "type": "string_pattern_mismatch"}]
    body = await analytics.post("/messages/batch", json={"items": [{"user_id": "a b", "message_id": "m", "timestamp": TS}]})
    assert body.status_code == 422
    assert body.json()["detail"][0]["msg"] == RULE_IN_WORDS
    assert body.json()["detail"][0]["loc"] == ["body", "items", 0, "user_id"]


async def test_a_user_id_of_the_wrong_type_says_so(chat):
    response = await chat.post("/chat/", json={"user_id": 5, "text": "hi"})
    assert response.json()["detail"][0]["type"] == "string_type"


NOT_ISO_8601 = [0, 1700000000, 1.5, "0", "1700000000", "2025-04-06", "yesterday", True, None]


@pytest.mark.parametrize("stamp", NOT_ISO_8601)
async def test_chat_takes_iso_8601_timestamps_only(chat, stamp):
    response = await chat.post("/chat/", json={"user_id": "bob", "text": "hi", "metadata": {"timestamp": stamp}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "metadata", "timestamp"]


@pytest.mark.parametrize("stamp", NOT_ISO_8601)
async def test_analytics_takes_iso_8601_timestamps_only(analytics, stamp):
    one = await analytics.post("/analytics/carol/messages", json={"message_id": "m", "timestamp": stamp})
    batch = await analytics.post("/messages/batch", json={"items": [{"user_id": "carol", "message_id": "m", "timestamp": stamp}]})
    assert (one.status_code, batch.status_code) == (422, 422)
    assert (await analytics.get("/analytics/carol")).status_code == 404, "nothing was recorded"


@pytest.mark.parametrize("stamp", ["2025-04-06T12:00:00Z", "2025-04-06T14:00:00+02:00", "2025-04-06 12:00:00.123456+00:00"])
async def test_iso_8601_timestamps_are_accepted(chat, analytics, stamp):
    assert (await chat.post("/chat/", json={"user_id": "bob", "text": "hi", "metadata": {"timestamp": stamp}})).status_code == 200
    assert (await analytics.post("/analytics/carol/messages", json={"message_id": "m", "timestamp": stamp})).status_code == 200


async def test_a_naive_timestamp_is_read_as_utc_by_chat_and_refused_by_analytics(chat, analytics):
    assert (
        await chat.post("/chat/", json={"user_id": "bob", "text": "hi", "metadata": {"timestamp": "2025-04-06T12:00:00"}})
    ).status_code == 200
    naive = await analytics.post("/analytics/carol/messages", json={"message_id": "m", "timestamp": "2025-04-06T12:00:00"})
    assert naive.status_code == 422


NOT_JSON = {
    "not UTF-8": b'{"user_id": "\xff\xfe"}',
    "latin-1": '{"user_id": "bob", "text": "caf\xe9"}'.encode("latin-1"),
    "malformed": b"{not json",
    "nested too deep": b"[" * 60000,
}


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_a_body_that_is_not_json_is_422_json_invalid_on_chat(chat, body):
    response = await chat.post("/chat/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
@pytest.mark.parametrize("path", ["/analytics/carol/messages", "/messages/batch"])
async def test_a_body_that_is_not_json_is_422_json_invalid_on_analytics(analytics, path, body):
    response = await analytics.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("path", ["/chat/", "/chat"])
async def test_chat_answers_with_and_without_the_slash(chat, path):
    response = await chat.post(path, json={"user_id": "alice", "text": "Hello"})
    assert response.status_code == 200, "no 307 redirect"
    assert "5 messages" in response.json()["reply"]


async def test_the_slashless_chat_holds_the_same_rules(chat):
    assert (await chat.post("/chat", json={"user_id": "..", "text": "hi"})).status_code == 422
    assert (await chat.post("/chat", json={"user_id": "bob", "text": "  "})).json() == {"detail": "Message text cannot be empty"}
