"""Choosing the model: offline by default; otherwise a fallback chain of OpenAI-compatible endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import httpx2
import openai
from agents import Model, OpenAIChatCompletionsModel, RunConfig
from agents.tracing import get_trace_provider
from opentelemetry.trace import Tracer
from pydantic import SecretStr

from resilience import Event, Hook, Pipeline, log_event
from servicekit.logging import get_logger

from ..core.config import OFFLINE, Settings
from .endpoint import CallObserver, ModelEndpoint
from .lean_client import lean_client_class
from .model_errors import classify_model_error
from .offline_model import OfflineModel
from .resilient_model import ResilientModel
from .tracing import RunTracing

log = get_logger("llm")


def log_model_event(event: Event) -> None:
    """`log_event` for model pipelines, minus "fallback": the chain logs each endpoint failure itself,
    with the provider's words, and an open breaker's fast refusals are not worth a line per chat."""
    if event.name != "fallback":
        log_event(event)


@dataclass
class LLM:
    model: Model
    run_config: RunConfig
    provider: str
    endpoints: tuple[ModelEndpoint, ...] = field(default=())
    offline_fallback: bool = False
    tracing: RunTracing | None = None  # OpenTelemetry on: what each run's span needs


def _client(base_url: str | None, api_key: SecretStr | None, settings: Settings, resources: AsyncExitStack) -> openai.AsyncOpenAI:
    """One client per endpoint on the aiohttp transport, its own retries off; closed with the stack."""
    timeout = openai.Timeout(settings.llm_timeout, connect=min(5.0, settings.llm_timeout))
    # Twice the concurrency limit: a connection still closing after a cancelled attempt must never
    # make a new attempt wait for the pool (that wait would count against the endpoint). Idle
    # connections expire after 4 s, under the common 5 s server keep-alive (uvicorn, Node), so a
    # breaker's probe never picks a connection the server is closing and fails for that alone.
    limits = httpx2.Limits(
        max_connections=2 * settings.llm_max_concurrency,
        max_keepalive_connections=settings.llm_max_concurrency,
        keepalive_expiry=4.0,
    )
    # The stock client, minus a request "transform" that changes nothing here (see .lean_client).
    client = lean_client_class()(
        api_key=api_key.get_secret_value() if api_key else "not-needed",
        base_url=base_url,
        timeout=timeout,
        max_retries=0,  # one retry loop only: the endpoint's pipeline
        http_client=openai.DefaultAioHttpClient(timeout=timeout, limits=limits),
        # Validating is ~25x cheaper than the client's lenient parse (4 vs 100 us a completion,
        # measured), and turns a malformed answer into a clear error instead of an AttributeError.
        _strict_response_validation=settings.llm_strict_responses,
    )
    resources.push_async_callback(client.close)
    return client


def build_llm(
    settings: Settings, resources: AsyncExitStack, *, hooks: Sequence[Hook], observer: CallObserver, tracer: Tracer | None = None
) -> LLM:
    """One model per process. The Agents SDK's tracing exports only to OpenAI itself, and only when
    enabled; OpenTelemetry spans (with a `tracer`) are our own and never go through it."""
    if not settings.use_openai:
        if settings.llm_fallbacks:
            log.warning(
                "llm_fallbacks_ignored", reason="no OPENAI_API_KEY or CHAT_LLM_PROVIDER=offline: the offline model answers"
            )
        run_tracing = RunTracing(tracer, OFFLINE, settings.trace_content) if tracer is not None else None
        return LLM(OfflineModel(), RunConfig(tracing_disabled=True, workflow_name="chat"), "offline", tracing=run_tracing)
    # Every OpenAIChatCompletionsModel call opens an SDK span (a no-op while the SDK's tracing is
    # off), and the first one builds the SDK's trace provider and exporter: an httpx client with a
    # TLS context, ~65 ms on the event loop, stalling every request in flight. Built here instead,
    # at start-up, before the start-up objects are frozen.
    get_trace_provider()
    chain: list[tuple[str | None, str, SecretStr | None]] = [(settings.openai_base_url, settings.model, settings.openai_api_key)]
    chain += [(entry.base_url, entry.model, entry.api_key) for entry in settings.llm_fallbacks if not isinstance(entry, str)]
    policy = settings.llm_policy.to_policy(
        deadline=settings.run_deadline, concurrency=settings.llm_max_concurrency, attempt_timeout=settings.llm_timeout
    )
    endpoints = []
    for index, (base_url, model, api_key) in enumerate(chain):
        name = "primary" if index == 0 else f"fallback-{index}"
        client = _client(base_url, api_key, settings, resources)
        endpoints.append(
            ModelEndpoint(
                name,
                OpenAIChatCompletionsModel(model=model, openai_client=client),
                Pipeline(f"llm-{name}", policy, on=classify_model_error, hooks=hooks, tracer=tracer),
                max_concurrency=settings.llm_max_concurrency,
                attempt_timeout=settings.llm_timeout,
                observer=observer,
                model_name=model,
                tracer=tracer,
            )
        )
    offline_fallback = OFFLINE in settings.llm_fallbacks
    tracing = settings.tracing_enabled and settings.openai_base_url is None
    return LLM(
        ResilientModel(endpoints, observer=observer, last_resort=OfflineModel() if offline_fallback else None),
        RunConfig(tracing_disabled=not tracing, trace_include_sensitive_data=False, workflow_name="chat"),
        "openai" if settings.openai_base_url is None else "openai-compatible",
        tuple(endpoints),
        offline_fallback,
        RunTracing(tracer, settings.model, settings.trace_content) if tracer is not None else None,
    )
