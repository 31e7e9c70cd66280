"""Choosing the model: offline by default, OpenAI or any compatible endpoint when configured."""

from __future__ import annotations

from dataclasses import dataclass

from agents import Model, OpenAIChatCompletionsModel, RunConfig
from openai import AsyncOpenAI, Timeout

from ..core.config import Settings
from .offline_model import OfflineModel


@dataclass
class LLM:
    model: Model
    run_config: RunConfig
    provider: str
    client: AsyncOpenAI | None = None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def build_llm(settings: Settings) -> LLM:
    """One model per process. Tracing exports only to OpenAI itself, and only when enabled."""
    if not settings.use_openai:
        return LLM(OfflineModel(), RunConfig(tracing_disabled=True, workflow_name="chat"), "offline")
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
    client = AsyncOpenAI(
        api_key=api_key,
        base_url=settings.openai_base_url,
        timeout=Timeout(settings.llm_timeout, connect=min(5.0, settings.llm_timeout)),
        max_retries=settings.llm_max_retries,
    )
    tracing = settings.tracing_enabled and settings.openai_base_url is None
    provider = "openai" if settings.openai_base_url is None else "openai-compatible"
    return LLM(
        OpenAIChatCompletionsModel(model=settings.model, openai_client=client),
        RunConfig(tracing_disabled=not tracing, trace_include_sensitive_data=False, workflow_name="chat"),
        provider,
        client,
    )
