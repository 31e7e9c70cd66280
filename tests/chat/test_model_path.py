"""The model path through the chat API, against two fake OpenAI-compatible servers run as real processes."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from load_tests.processes import ServiceProcess, chat_env, free_port
from tests.chat.conftest import MESSAGE, drained, model_settings

pytestmark = pytest.mark.integration


async def test_replies_come_from_the_primary_with_the_users_count(chat_with, analytics_transport, models):
    primary, fallback = models
    async with chat_with(analytics_transport, **model_settings(models)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        assert response.status_code == 200
        assert response.json()["reply"] == "primary here. You have sent 5 messages."
        assert "fallback" not in response.json()["metadata"]
        timed = await chat.post("/chat/", json={"user_id": "bob", "text": "what time is it?"})
        assert "Tool said: " in timed.json()["reply"] and "UTC" in timed.json()["reply"]
        llm = (await chat.get("/health/dependencies")).json()["llm"]
        metrics = (await chat.get("/metrics")).text
    assert llm["provider"] == "openai-compatible" and llm["offline_fallback"] is False
    assert [(e["name"], e["breaker"], e["in_flight"]) for e in llm["endpoints"]] == [
        ("primary", "closed", 0),
        ("fallback-1", "closed", 0),
    ]
    assert primary.requests == 3 and fallback.requests == 0  # the time question takes two turns
    seen = primary.seen()[0]
    assert seen["authorization"] == "Bearer sk-test-secret" and seen["body"]["model"] == "primary-model"
    assert 'chat_llm_calls_total{endpoint="primary",outcome="ok"} 3.0' in metrics
    assert 'chat_llm_tokens_total{endpoint="primary",kind="output"}' in metrics
    assert 'chat_llm_call_seconds_count{endpoint="primary"} 3.0' in metrics
    assert 'chat_llm_in_flight{endpoint="primary"} 0.0' in metrics
    assert 'chat_breaker_state{target="llm-primary"} 0.0' in metrics


async def test_a_count_of_one_reads_1_message(chat_with, analytics_transport, models):
    primary, _ = models
    async with chat_with(analytics_transport, **model_settings(models)) as chat:
        await chat.post("/chat/", json={"user_id": "newcomer", "text": "hi"})
        await drained(chat)
        reply = (await chat.post("/chat/", json={"user_id": "newcomer", "text": "hi"})).json()["reply"]
    assert reply == "primary here. You have sent 1 message."
    system = primary.seen()[-1]["body"]["messages"][0]["content"]
    assert "The user has sent 1 message so far" in system


async def test_a_primary_answering_503_is_retried_then_the_fallback_answers(chat_with, analytics_transport, models):
    primary, fallback = models
    primary.switch(mode="503")
    async with chat_with(analytics_transport, **model_settings(models)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        metrics = (await chat.get("/metrics")).text
    assert response.status_code == 200
    assert response.json()["reply"] == "fallback here. You have sent 5 messages."
    assert primary.requests == 2, "two attempts (policy attempts=2), the openai client's own retries off"
    assert fallback.requests == 1
    assert 'chat_llm_calls_total{endpoint="primary",outcome="status_503"} 1.0' in metrics
    assert 'chat_llm_retries_total{endpoint="primary"} 1.0' in metrics


async def test_the_primarys_breaker_opens_and_then_it_gets_no_requests(chat_with, analytics_transport, models):
    primary, fallback = models
    primary.switch(mode="503")
    settings = model_settings(models, llm_policy={"attempts": 1, "breaker_failures": 3, "breaker_reset": 30})
    async with chat_with(analytics_transport, **settings) as chat:
        replies = [await chat.post("/chat/", json=MESSAGE) for _ in range(10)]
        llm = (await chat.get("/health/dependencies")).json()["llm"]
        metrics = (await chat.get("/metrics")).text
    assert [r.status_code for r in replies] == [200] * 10
    assert all(r.json()["reply"].startswith("fallback here") for r in replies)
    assert primary.requests == 3 and fallback.requests == 10
    assert llm["endpoints"][0]["breaker"] == "open" and llm["endpoints"][0]["reopens_in"] > 25
    assert 'chat_breaker_state{target="llm-primary"} 2.0' in metrics
    assert 'chat_llm_calls_total{endpoint="primary",outcome="breaker_open"} 7.0' in metrics


async def test_both_down_is_503_with_retry_after_and_soon_costs_no_requests(chat_with, analytics_transport, models):
    primary, fallback = models
    for fake in models:
        fake.switch(mode="503")
    settings = model_settings(models, llm_policy={"attempts": 1, "breaker_failures": 2, "breaker_reset": 10})
    async with chat_with(analytics_transport, **settings) as chat:
        first = await chat.post("/chat/", json=MESSAGE)
        assert first.status_code == 503 and first.headers["retry-after"] == "1"
        assert first.json() == {"detail": "The model provider is unavailable"}  # never the provider's own words
        await chat.post("/chat/", json=MESSAGE)  # both breakers open now
        sent = primary.requests + fallback.requests
        started = time.perf_counter()
        fast = [await chat.post("/chat/", json=MESSAGE) for _ in range(20)]
        elapsed = time.perf_counter() - started
    assert sent == 4 and primary.requests + fallback.requests == 4, "open breakers send nothing"
    assert {r.status_code for r in fast} == {503}
    assert {r.headers["retry-after"] for r in fast} <= {"9", "10"}, "the earliest breaker reset, rounded up"
    assert elapsed / 20 < 0.25, "fails fast once open (the benchmark measures the real figure)"


async def test_rate_limits_answer_503_with_the_providers_retry_after(chat_with, analytics_transport, models):
    primary, fallback = models
    primary.switch(mode="429", retry_after="7")
    fallback.switch(mode="429", retry_after="9")
    async with chat_with(analytics_transport, **model_settings(models)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        metrics = (await chat.get("/metrics")).text
    assert response.status_code == 503
    assert response.json() == {"detail": "The model provider is rate limiting us"}
    assert response.headers["retry-after"] == "7"
    assert primary.requests == 1 and fallback.requests == 1, "a Retry-After over retry_after_max is not waited out"
    assert 'chat_llm_errors_total{kind="rate_limited"} 1.0' in metrics


async def test_a_short_retry_after_is_waited_out_on_the_same_endpoint(chat_with, analytics_transport, models):
    primary, _ = models
    primary.switch(mode="429", retry_after="1")
    async with chat_with(analytics_transport, **model_settings(models, fallback=False)) as chat:
        started = time.perf_counter()
        response = await chat.post("/chat/", json=MESSAGE)
        elapsed = time.perf_counter() - started
    assert response.status_code == 503 and primary.requests == 2
    assert elapsed >= 1.0


async def test_a_hanging_primary_costs_one_attempt_timeout_then_the_fallback_answers(chat_with, analytics_transport, models):
    primary, fallback = models
    primary.switch(mode="hang")
    settings = model_settings(models, llm_timeout=0.5, llm_policy={"attempts": 1})
    async with chat_with(analytics_transport, **settings) as chat:
        started = time.perf_counter()
        response = await chat.post("/chat/", json=MESSAGE)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200 and response.json()["reply"].startswith("fallback here")
    assert (primary.requests, fallback.requests) == (1, 1)
    assert 0.5 <= elapsed < 0.5 + 1.5  # generous: noisy machines


async def test_timeouts_everywhere_answer_504(chat_with, analytics_transport, models):
    for fake in models:
        fake.switch(mode="hang")
    settings = model_settings(models, llm_timeout=0.3, llm_policy={"attempts": 1})
    async with chat_with(analytics_transport, **settings) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
    assert response.status_code == 504
    assert response.json() == {"detail": "The model provider timed out"}


async def test_the_whole_run_deadline_bounds_every_attempt(chat_with, analytics_transport, models):
    for fake in models:
        fake.switch(mode="hang")
    settings = model_settings(models, llm_timeout=30.0, run_deadline=0.4)
    async with chat_with(analytics_transport, **settings) as chat:
        started = time.perf_counter()
        response = await chat.post("/chat/", json=MESSAGE)
        elapsed = time.perf_counter() - started
    assert response.status_code == 504
    assert response.json()["detail"] in ("The model did not answer in time", "The model provider timed out")
    assert elapsed < 0.4 + 1.0


@pytest.mark.parametrize("mode", ["garbage", "invalid_json", "empty"])
async def test_a_bad_answer_is_not_retried_but_the_fallback_gets_its_chance(chat_with, analytics_transport, models, mode):
    primary, fallback = models
    primary.switch(mode=mode)
    async with chat_with(analytics_transport, **model_settings(models)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        metrics = (await chat.get("/metrics")).text
    assert response.status_code == 200 and response.json()["reply"].startswith("fallback here")
    assert primary.requests == 1 and fallback.requests == 1
    assert 'chat_llm_calls_total{endpoint="primary",outcome="invalid_response"} 1.0' in metrics


async def test_bad_answers_everywhere_answer_502(chat_with, analytics_transport, models):
    for fake in models:
        fake.switch(mode="garbage")
    async with chat_with(analytics_transport, **model_settings(models)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        assert (await chat.get("/health/dependencies")).json()["outbox"]["depth"] == 0, "a failed run records nothing"
    assert response.status_code == 502
    assert response.json() == {"detail": "The model gave an answer we cannot use"}


async def test_a_client_error_is_not_retried(chat_with, analytics_transport, models):
    primary, _ = models
    primary.switch(mode="401")
    async with chat_with(analytics_transport, **model_settings(models, fallback=False)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
    assert response.status_code == 502 and primary.requests == 1


async def test_the_offline_model_is_the_last_resort_and_says_so(chat_with, analytics_transport, models):
    for fake in models:
        fake.switch(mode="503")
    async with chat_with(analytics_transport, **model_settings(models, offline=True)) as chat:
        response = await chat.post("/chat/", json=MESSAGE)
        llm = (await chat.get("/health/dependencies")).json()["llm"]
        metrics = (await chat.get("/metrics")).text
    assert response.status_code == 200
    assert response.json()["reply"] == (
        "Hello! You have sent 5 messages so far. This is message 1 of this conversation. How can I help you today?"
    )
    assert response.json()["metadata"]["fallback"] == "offline"
    assert llm["offline_fallback"] is True
    assert "chat_llm_offline_replies_total 1.0" in metrics
    assert 'chat_llm_calls_total{endpoint="offline",outcome="ok"} 1.0' in metrics


async def test_a_full_endpoint_fails_fast_to_the_next(chat_with, analytics_transport, models):
    primary, fallback = models
    primary.switch(think=0.5)
    async with chat_with(analytics_transport, **model_settings(models, llm_max_concurrency=1)) as chat:
        slow, fast = await asyncio.gather(
            chat.post("/chat/", json=MESSAGE), chat.post("/chat/", json={**MESSAGE, "user_id": "bob"})
        )
        metrics = (await chat.get("/metrics")).text
    replies = sorted(r.json()["reply"].split(" ")[0] for r in (slow, fast))
    assert replies == ["fallback", "primary"]
    assert primary.requests == 1 and fallback.requests == 1
    assert 'chat_llm_calls_total{endpoint="primary",outcome="bulkhead_full"} 1.0' in metrics


async def test_a_full_endpoint_without_a_fallback_answers_503_at_once(chat_with, analytics_transport, models):
    primary, _ = models
    primary.switch(think=0.5)
    async with chat_with(analytics_transport, **model_settings(models, fallback=False, llm_max_concurrency=1)) as chat:
        first = asyncio.create_task(chat.post("/chat/", json=_in_session(MESSAGE, "first")))
        while primary.requests == 0:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        refused = await chat.post("/chat/", json=_in_session(MESSAGE, "second"))  # another conversation: no session wait
        elapsed = time.perf_counter() - started
        assert (await first).status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert elapsed < 0.4, "no queueing behind the slow call"


async def test_a_killed_endpoint_is_a_connect_failure(chat_with, analytics_transport, models, capsys):
    _, fallback = models
    dead = {"openai_base_url": f"http://127.0.0.1:{free_port()}/v1", "llm_policy": {"attempts": 1}}
    async with chat_with(analytics_transport, **model_settings(models, **dead)) as chat:
        answered = await chat.post("/chat/", json=MESSAGE)
        fallback.switch(mode="503")
        refused = await chat.post("/chat/", json=MESSAGE)
        metrics = (await chat.get("/metrics")).text
    assert answered.status_code == 200 and answered.json()["reply"].startswith("fallback here")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert 'chat_llm_calls_total{endpoint="primary",outcome="connect"} 2.0' in metrics
    log = capsys.readouterr().out
    assert "fake 503" in log and "fake 503" not in refused.text, "the provider's words go to our log only"


async def test_model_calls_in_flight_are_reported_by_every_worker(tmp_path, models):
    """Under --workers the scrape merges workers' files: the gauge is set as calls start and end."""
    primary, _ = models
    primary.switch(think=1.5)
    chat = ServiceProcess(
        "chat_service.main:app",
        log_path=tmp_path / "chat.log",
        workers=2,
        env=chat_env(
            f"http://127.0.0.1:{free_port()}",  # nobody there: counts fall back to 0 at once
            tmp_path / "outbox.sqlite3",
            CHAT_LLM_PROVIDER="auto",
            OPENAI_API_KEY="sk-test-secret",
            OPENAI_BASE_URL=primary.base_url,
        ),
    )
    fresh = httpx.Limits(max_keepalive_connections=0)  # either worker may take each chat
    with chat:
        async with httpx.AsyncClient(base_url=chat.url, timeout=20, limits=fresh) as client:
            # Six conversations: messages of one conversation would run one at a time.
            chats = [asyncio.create_task(client.post("/chat/", json=_in_session(MESSAGE, f"s{i}"))) for i in range(6)]
            deadline = time.monotonic() + 10
            in_flight = 0.0
            while in_flight < 6:
                assert time.monotonic() < deadline, f"chat_llm_in_flight never showed the 6 calls (last: {in_flight})"
                in_flight = _sample(await client.get("/metrics"), 'chat_llm_in_flight{endpoint="primary"}')
                await asyncio.sleep(0.05)
            assert [reply.status_code for reply in await asyncio.gather(*chats)] == [200] * 6
            assert _sample(await client.get("/metrics"), 'chat_llm_in_flight{endpoint="primary"}') == 0


def _in_session(message: dict, session_id: str) -> dict:
    return {**message, "metadata": {**message["metadata"], "session_id": session_id}}


def _sample(metrics: httpx.Response, series: str) -> float:
    for line in metrics.text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
