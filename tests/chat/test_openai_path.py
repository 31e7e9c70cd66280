"""The OpenAI-compatible path, against a local fake server run as a real process."""

from __future__ import annotations

import httpx
import pytest

from load_tests.processes import ServiceProcess
from tests.chat.conftest import MESSAGE


@pytest.fixture(scope="module")
def fake_openai(tmp_path_factory):
    with ServiceProcess("tests.fakes.openai_server:app", log_path=tmp_path_factory.mktemp("fake") / "log") as server:
        yield server


def llm_settings(fake_openai, model: str, **extra: object) -> dict[str, object]:
    return {
        "llm_provider": "auto",
        "openai_api_key": "sk-test-secret",
        "openai_base_url": fake_openai.url + "/v1",
        "model": model,
        "llm_timeout": 1.0,
        "llm_max_retries": 0,
        **extra,
    }


async def test_replies_come_from_the_model_with_the_users_count(chat_with, analytics_transport, fake_openai):
    async with chat_with(analytics_transport, **llm_settings(fake_openai, "fake-ok")) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        assert response.status_code == 200
        assert response.json()["reply"] == "Fake LLM here. You have sent 5 messages."
        timed = await chat.post("/chat/", json={"user_id": "bob", "text": "what time is it?"})
        assert "Tool said: " in timed.json()["reply"] and "UTC" in timed.json()["reply"]
        assert (await chat.get("/health/dependencies")).json()["llm"] == {"provider": "openai-compatible"}
    seen = httpx.get(fake_openai.url + "/requests").json()
    assert seen[0]["authorization"] == "Bearer sk-test-secret"
    assert seen[0]["body"]["model"] == "fake-ok"


@pytest.mark.parametrize(
    ("model", "status", "detail"),
    [
        ("fake-500", 502, "The model provider answered 500"),
        ("fake-429", 503, "The model provider is rate limiting us"),
        ("fake-hang", 504, "The model provider timed out"),
        ("fake-garbage", 502, "The model gave an answer we cannot use"),
    ],
)
async def test_llm_failures_are_clear_json_errors(chat_with, analytics_transport, fake_openai, model, status, detail):
    async with chat_with(analytics_transport, **llm_settings(fake_openai, model)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        assert response.status_code == status
        assert response.json() == {"detail": detail}
        if status == 503:
            assert response.headers["retry-after"] == "7"
        metrics = (await chat.get("/metrics")).text
        assert "chat_llm_errors_total" in metrics


async def test_the_whole_run_deadline_answers_504(chat_with, analytics_transport, fake_openai):
    settings = llm_settings(fake_openai, "fake-hang", llm_timeout=30.0, run_deadline=0.3)
    async with chat_with(analytics_transport, **settings) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
    assert response.status_code == 504
    assert response.json() == {"detail": "The model did not answer in time"}


async def test_a_failed_run_records_nothing(chat_with, analytics_transport, fake_openai):
    async with chat_with(analytics_transport, **llm_settings(fake_openai, "fake-500")) as chat:
        await chat.post("/chat/", json=MESSAGE)
        assert (await chat.get("/health/dependencies")).json()["outbox"]["depth"] == 0
