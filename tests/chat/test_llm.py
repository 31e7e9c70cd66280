"""What `build_llm` does at start-up so that the first chats do not pay for it."""

from __future__ import annotations

import contextlib

from agents.tracing import setup
from prometheus_client import CollectorRegistry

from chat_service.agent.llm import build_llm
from chat_service.core.metrics import ChatMetrics
from tests.chat.conftest import chat_settings


async def test_the_sdks_trace_provider_is_built_at_start_up_not_on_the_first_model_call(tmp_path, monkeypatch) -> None:
    # Built lazily, it costs the first model call ~65 ms on the event loop (an httpx client and a
    # TLS context for the SDK's exporter), stalling every request in flight.
    monkeypatch.setattr(setup, "GLOBAL_TRACE_PROVIDER", None)
    endpoint = {"llm_provider": "auto", "openai_api_key": "sk-x", "openai_base_url": "http://127.0.0.1:9/v1"}
    async with contextlib.AsyncExitStack() as resources:
        build_llm(chat_settings(tmp_path, **endpoint), resources, hooks=(), observer=ChatMetrics(CollectorRegistry()))
        assert setup.GLOBAL_TRACE_PROVIDER is not None
