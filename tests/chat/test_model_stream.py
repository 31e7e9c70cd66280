"""The resilient model itself, streaming and not, against the two fake model servers (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from agents import ModelSettings, ModelTracing, Runner
from prometheus_client import CollectorRegistry

from chat_service.agent.agent import build_agent, personalized
from chat_service.agent.llm import LLM, build_llm
from chat_service.agent.model_errors import ModelStreamInterrupted, ModelTimeout, ModelUnavailable
from chat_service.agent.resilient_model import model_run_scope
from chat_service.agent.tools import ChatContext
from chat_service.core.metrics import ChatMetrics
from tests.chat.conftest import chat_settings, model_settings

pytestmark = pytest.mark.integration

INSTRUCTIONS = "You are a helpful chatbot. The user has sent 2 messages so far."


@contextlib.asynccontextmanager
async def resilient_llm(tmp_path, models, **overrides: object) -> AsyncIterator[LLM]:
    settings = chat_settings(tmp_path, **model_settings(models, **overrides))
    async with contextlib.AsyncExitStack() as resources:
        yield build_llm(settings, resources, hooks=(), observer=ChatMetrics(CollectorRegistry()))


def stream(llm: LLM, text: str = "hi") -> AsyncIterator[object]:
    return llm.model.stream_response(INSTRUCTIONS, text, ModelSettings(), [], None, [], ModelTracing.DISABLED)


def text_of(events: list[object]) -> str:
    return "".join(getattr(e, "delta", "") for e in events if getattr(e, "type", "") == "response.output_text.delta")


async def test_a_stream_comes_from_the_primary(tmp_path, models):
    primary, fallback = models
    async with resilient_llm(tmp_path, models) as llm:
        events = [event async for event in stream(llm)]
        assert llm.endpoints[0].limit.in_flight == 0, "a finished stream gives its slot back"
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert text_of(events) == "primary here. You have sent 2 messages."
    assert (primary.requests, fallback.requests) == (1, 0)


@pytest.mark.parametrize("mode", ["503", "hang", "garbage"])
async def test_a_stream_that_cannot_open_comes_from_the_fallback(tmp_path, models, mode):
    primary, fallback = models
    primary.switch(mode=mode)
    async with resilient_llm(tmp_path, models, llm_timeout=0.5, llm_policy={"attempts": 1}) as llm:
        events = [event async for event in stream(llm)]
    assert text_of(events) == "fallback here. You have sent 2 messages."
    assert (primary.requests, fallback.requests) == (1, 1)


@pytest.mark.parametrize(("mode", "status"), [("stall", 504), ("cut", 502)])
async def test_a_stream_that_breaks_after_its_first_event_is_neither_retried_nor_replaced(tmp_path, models, mode, status):
    primary, fallback = models
    primary.switch(mode=mode)
    events: list[object] = []
    async with resilient_llm(tmp_path, models, llm_timeout=0.5) as llm:
        with pytest.raises(ModelStreamInterrupted) as raised:
            async for event in stream(llm):
                events.append(event)
        assert llm.endpoints[0].limit.in_flight == 0
    assert raised.value.status == status
    assert events and events[0].type == "response.created"
    assert (primary.requests, fallback.requests) == (1, 0), "output reached the caller: no retry, no fallback"


async def test_a_stream_nobody_can_open_raises_before_any_event(tmp_path, models):
    for fake in models:
        fake.switch(mode="503")
    async with resilient_llm(tmp_path, models, llm_policy={"attempts": 1}) as llm:
        with pytest.raises(ModelUnavailable) as raised:
            await anext(aiter(stream(llm)))
    assert raised.value.status == 503 and raised.value.retry_after == 1


async def test_an_open_stream_holds_its_concurrency_slot(tmp_path, models):
    primary, fallback = models
    async with resilient_llm(tmp_path, models, llm_max_concurrency=1) as llm:
        events = stream(llm)
        assert (await anext(aiter(events))).type == "response.created"
        assert llm.endpoints[0].limit.in_flight == 1
        reply = await llm.model.get_response(INSTRUCTIONS, "hi", ModelSettings(), [], None, [], ModelTracing.DISABLED)
        assert reply.output[0].content[0].text.startswith("fallback here")
        await events.aclose()  # type: ignore[attr-defined]
        assert llm.endpoints[0].limit.in_flight == 0
    assert (primary.requests, fallback.requests) == (1, 1)


async def test_the_runner_streams_through_the_chain(tmp_path, models):
    primary, _ = models
    primary.switch(mode="503")
    async with resilient_llm(tmp_path, models, llm_policy={"attempts": 1}) as llm:
        agent = personalized(build_agent(llm.model), 3)
        result = Runner.run_streamed(agent, "hi", context=ChatContext("alice", None), run_config=llm.run_config)  # type: ignore[arg-type]
        kinds = [event.type async for event in result.stream_events()]
    assert "raw_response_event" in kinds
    assert result.final_output == "fallback here. You have sent 3 messages."


async def test_no_attempt_outlives_the_time_the_run_has_left(tmp_path, models):
    for fake in models:
        fake.switch(mode="hang")
    async with resilient_llm(tmp_path, models, llm_timeout=30.0) as llm:
        started = time.perf_counter()
        with model_run_scope(0.3), pytest.raises(ModelTimeout):
            await llm.model.get_response(INSTRUCTIONS, "hi", ModelSettings(), [], None, [], ModelTracing.DISABLED)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.3 + 1.0  # generous: noisy machines


async def test_clients_use_the_aiohttp_transport_without_retries_and_close_with_the_stack(tmp_path, models):
    async with resilient_llm(tmp_path, models) as llm:
        clients = [endpoint.model._client for endpoint in llm.endpoints]  # type: ignore[attr-defined]
        assert [type(c._client).__name__ for c in clients] == ["_InstalledAioHttpClient"] * 2
        assert {c.max_retries for c in clients} == {0}
        hello = [{"role": "user", "content": "hi"}]
        await asyncio.gather(*(c.chat.completions.create(model="m", messages=hello) for c in clients))
    assert all(c.is_closed() for c in clients)
