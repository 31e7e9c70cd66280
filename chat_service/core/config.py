"""Chat settings, read from CHAT_* environment variables (OPENAI_* keep their usual names)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from resilience import Policy, Timeouts
from servicekit.admission import AdmissionPolicy
from servicekit.logging import LogFormat
from servicekit.validation import OptionalSecret, OptionalText


class PolicySettings(BaseModel):
    """One resilience policy; set fields as CHAT_ANALYTICS_READ__DEADLINE=0.5 and so on."""

    deadline: float = Field(0.5, gt=0, description="Whole call, all attempts and backoff, seconds")
    connect_timeout: float = Field(0.1, gt=0)
    read_timeout: float = Field(0.2, gt=0)
    write_timeout: float = Field(0.1, gt=0)
    pool_timeout: float = Field(0.05, gt=0)
    attempts: int = Field(3, ge=1, le=10)
    backoff_initial: float = Field(0.025, gt=0)
    backoff_max: float = Field(0.25, gt=0)
    retry_after_max: float = Field(0.25, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset: float = Field(5.0, gt=0)
    budget_ratio: float = Field(0.2, ge=0, le=1)
    budget_reserve: float = Field(10.0, ge=0)
    budget_refill_per_second: float = Field(1.0, ge=0)
    bulkhead: int = Field(100, ge=1)

    def to_policy(self) -> Policy:
        return Policy(
            deadline=self.deadline,
            timeouts=Timeouts(self.connect_timeout, self.read_timeout, self.write_timeout, self.pool_timeout),
            attempts=self.attempts,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            retry_after_max=self.retry_after_max,
            breaker_failures=self.breaker_failures,
            breaker_reset=self.breaker_reset,
            budget_ratio=self.budget_ratio,
            budget_reserve=self.budget_reserve,
            budget_refill_per_second=self.budget_refill_per_second,
            bulkhead=self.bulkhead,
        )


class AdmissionSettings(BaseModel):
    """Admission control for the work routes; set fields as CHAT_ADMISSION__MAX_LIMIT=200 and so on."""

    enabled: bool = True
    min_limit: int = Field(3, ge=1, description="Floor of the adaptive limit, and the concurrency of a probe")
    max_limit: int = Field(500, ge=1, description="Ceiling of the adaptive limit")
    initial_limit: int = Field(20, ge=1)
    latency_tolerance: float = Field(0.5, ge=0, description="Latency above the no-load latency that is not queueing")
    congested_lag: float = Field(0.002, ge=0, description="Event-loop lateness, seconds, from which latency counts as queueing")
    probe_interval: float = Field(60.0, gt=0, description="Seconds between measurements of the no-load latency")
    queue_timeout: float = Field(0.1, ge=0, description="Longest wait for a slot, seconds; 0 refuses instead of queueing")
    queue_max: int = Field(1000, ge=0)
    retry_after: int = Field(1, ge=0, description="Retry-After of a shed request, seconds")

    def to_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            initial_limit=min(max(self.initial_limit, self.min_limit), self.max_limit),
            latency_tolerance=self.latency_tolerance,
            congested_lag=self.congested_lag,
            probe_interval=self.probe_interval,
            queue_timeout=self.queue_timeout,
            queue_max=self.queue_max,
        )


def _record_policy() -> PolicySettings:
    # Records leave the request path through the outbox: they can afford more patience.
    return PolicySettings(deadline=3.0, read_timeout=2.0, connect_timeout=0.5, write_timeout=1.0, pool_timeout=0.5)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_", env_nested_delimiter="__", extra="ignore")

    analytics_url: str = "http://localhost:8001"
    analytics_api_token: OptionalSecret = None
    analytics_read: PolicySettings = Field(default_factory=PolicySettings)
    analytics_record: PolicySettings = Field(default_factory=_record_policy)
    analytics_max_connections: int = Field(100, ge=1)

    outbox_path: str = "./data/chat-outbox.sqlite3"
    outbox_max_rows: int = Field(100_000, ge=1)
    outbox_batch: int = Field(500, ge=1, le=1000)
    outbox_linger: float = Field(0.005, ge=0, description="Seconds to gather a batch before sending")
    shutdown_flush_seconds: float = Field(5.0, ge=0)

    llm_provider: Literal["auto", "offline", "openai"] = "auto"
    model: str = "gpt-4o"
    openai_api_key: OptionalSecret = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "CHAT_OPENAI_API_KEY"))
    openai_base_url: OptionalText = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL", "CHAT_OPENAI_BASE_URL"))
    llm_timeout: float = Field(20.0, gt=0, description="Per LLM request, seconds")
    llm_max_retries: int = Field(1, ge=0, le=5)
    run_deadline: float = Field(45.0, gt=0, description="Whole agent run, tools included, seconds")
    max_turns: int = Field(6, ge=1)
    tracing_enabled: bool = False

    max_text_chars: int = Field(8000, ge=1)
    max_body_bytes: int = Field(65_536, ge=1024)
    cors_origins: list[str] = ["http://localhost:3000"]

    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)

    rate_limit_per_minute: int | None = Field(None, ge=1, description="Chats per user per minute; off when unset")
    redis_url: OptionalText = None

    log_level: str = "INFO"
    log_format: LogFormat = "auto"

    @property
    def use_openai(self) -> bool:
        if self.llm_provider == "auto":
            return self.openai_api_key is not None
        return self.llm_provider == "openai"
