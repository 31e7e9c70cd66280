"""Chat settings, read from CHAT_* environment variables (OPENAI_* keep their usual names)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Self

import httpx
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from resilience import BreakerMode, Policy, Timeouts
from servicekit.admission import AdmissionPolicy
from servicekit.logging import LogFormat
from servicekit.validation import OptionalSecret, OptionalText, empty_is_unset

from ..auth import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, HMAC_MIN_BYTES

if TYPE_CHECKING:  # the sessions package imports the Agents SDK: settings stay light
    from ..sessions._guarded import BreakerOptions

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


_TIMEOUT_FIELDS = {"connect_timeout", "read_timeout", "write_timeout", "pool_timeout"}
OptionalSeconds = Annotated[float | None, BeforeValidator(empty_is_unset), Field(gt=0)]


class PolicySettings(BaseModel):
    """One resilience policy; set fields as CHAT_ANALYTICS_READ__DEADLINE=0.5 and so on."""

    deadline: float = Field(0.5, gt=0, description="Whole call, all attempts and backoff, seconds")
    connect_timeout: float = Field(0.1, gt=0)
    read_timeout: float = Field(0.2, gt=0, description="Per attempt when a retry could follow; the last gets the rest")
    write_timeout: float = Field(0.1, gt=0)
    pool_timeout: float = Field(0.05, gt=0)
    attempts: int = Field(3, ge=1, le=10)
    backoff_initial: float = Field(0.025, gt=0)
    backoff_max: float = Field(0.25, gt=0)
    retry_after_max: float = Field(0.25, ge=0)
    breaker_mode: BreakerMode = Field("rate", description="rate: failure rate over a window; consecutive: N in a row")
    breaker_failures: int = Field(5, ge=1, description="Consecutive mode: transient failures in a row that open it")
    breaker_window: float = Field(10.0, gt=0, description="Rate mode: seconds of attempts the failure rate covers")
    breaker_min_calls: int = Field(20, ge=1, description="Rate mode: attempts in the window before it may open")
    breaker_failure_rate: float = Field(0.5, gt=0, le=1, description="Rate mode: share of failed attempts that opens it")
    breaker_reset: float = Field(5.0, gt=0)
    budget_ratio: float = Field(0.2, ge=0, le=1)
    budget_reserve: float = Field(10.0, ge=0)
    budget_refill_per_second: float = Field(1.0, ge=0)
    bulkhead: int = Field(100, ge=1)
    hedge_delay: OptionalSeconds = Field(None, description="Start a second copy of a call unanswered this long; off when unset")

    def to_policy(self) -> Policy:
        # Every other field is named as Policy names it.
        timeouts = Timeouts(self.connect_timeout, self.read_timeout, self.write_timeout, self.pool_timeout)
        return Policy(timeouts=timeouts, **self.model_dump(exclude=_TIMEOUT_FIELDS))


class AdmissionSettings(BaseModel):
    """Admission control for the work routes; set fields as CHAT_ADMISSION__MAX_LIMIT=200 and so on."""

    enabled: bool = True
    min_limit: int = Field(3, ge=1, description="Floor of the adaptive limit, and the concurrency of a probe")
    max_limit: int = Field(500, ge=1, description="Ceiling of the adaptive limit")
    initial_limit: int = Field(32, ge=1, description="The limit to start from, before any latency without load was measured")
    latency_tolerance: float = Field(0.5, ge=0, description="Latency above the no-load latency that is not queueing")
    latency_allowance: float = Field(0.02, ge=0, description="Seconds of queueing here accepted on top of the tolerance")
    congested_lag: float = Field(0.002, ge=0, description="Event-loop lateness, seconds, from which latency counts as queueing")
    probe_interval: float = Field(60.0, gt=0, description="Seconds between measurements of the no-load latency")
    queue_timeout: float = Field(0.1, ge=0, description="Longest wait for a slot, seconds; 0 refuses instead of queueing")
    queue_max: int = Field(1000, ge=0)
    max_read_wait: float = Field(
        1.0, ge=0, description="Refuse a chat whose request waited this long, seconds, before chat read it; 0 never does"
    )
    retry_after: int = Field(1, ge=0, description="Retry-After of a shed request, seconds")

    @field_validator("max_read_wait")
    @classmethod
    def _measurable(cls, seconds: float) -> float:
        # The kernel counts the wait in jiffies (up to 10 ms): below 0.1 s prompt reads would be refused.
        if 0 < seconds < 0.1:
            raise ValueError("must be 0 (off) or at least 0.1 seconds")
        return seconds

    def to_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            initial_limit=min(max(self.initial_limit, self.min_limit), self.max_limit),
            latency_tolerance=self.latency_tolerance,
            latency_allowance=self.latency_allowance,
            congested_lag=self.congested_lag,
            probe_interval=self.probe_interval,
            queue_timeout=self.queue_timeout,
            queue_max=self.queue_max,
        )


class SessionBreakerSettings(BaseModel):
    """The session store's circuit breaker: CHAT_SESSION_BREAKER__MIN_CALLS=10 and so on (docs/conversations.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # reset=inf would leave it open for good

    mode: BreakerMode = Field("rate", description="rate: failure rate over a window; consecutive: N in a row")
    failures: int = Field(3, ge=1, description="Consecutive mode: failed store calls in a row that open it")
    window: float = Field(10.0, gt=0, description="Rate mode: seconds of store calls the failure rate covers")
    min_calls: int = Field(
        10, ge=1, description="Rate mode: calls in the window before it may open; this many failures in a row open it too"
    )
    failure_rate: float = Field(0.5, gt=0, le=1, description="Rate mode: share of failed calls that opens it")
    reset: float = Field(5.0, gt=0, description="Seconds open before one call probes the store again")

    def to_options(self) -> BreakerOptions:
        return {
            "mode": self.mode,
            "failures": self.failures,
            "window": self.window,
            "min_calls": self.min_calls,
            "failure_rate": self.failure_rate,
            "reset": self.reset,
        }


class ModelPolicySettings(BaseModel):
    """The policy of every model endpoint (each keeps its own state): CHAT_LLM_POLICY__ATTEMPTS=2, ...

    The per-attempt timeout is CHAT_LLM_TIMEOUT, the concurrency limit CHAT_LLM_MAX_CONCURRENCY
    and the deadline the time the agent run has left (CHAT_RUN_DEADLINE).
    """

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(2, ge=1, le=5, description="Attempts per endpoint and model call (1: no retry)")
    backoff_initial: float = Field(0.25, gt=0)
    backoff_max: float = Field(2.0, gt=0)
    retry_after_max: float = Field(1.0, ge=0, description="Longest provider Retry-After waited out on the same endpoint")
    # Consecutive counting by default: a model endpoint sees far fewer calls than analytics, and
    # a rate over a window would need `breaker_min_calls` slow failures before it could open.
    breaker_mode: BreakerMode = Field("consecutive", description="consecutive: N in a row; rate: failure rate over a window")
    breaker_failures: int = Field(5, ge=1, description="Consecutive mode: transient failures in a row that open it")
    breaker_window: float = Field(30.0, gt=0, description="Rate mode: seconds of attempts the failure rate covers")
    breaker_min_calls: int = Field(10, ge=1, description="Rate mode: attempts in the window before it may open")
    breaker_failure_rate: float = Field(0.5, gt=0, le=1, description="Rate mode: share of failed attempts that opens it")
    breaker_reset: float = Field(5.0, gt=0)
    budget_ratio: float = Field(0.2, ge=0, le=1)
    budget_reserve: float = Field(5.0, ge=0)
    budget_refill_per_second: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _policy_can_work(self) -> Self:
        # ConfigurationError is a ValueError: a clear start-up error
        self.to_policy(deadline=1.0, concurrency=1, attempt_timeout=1.0)
        return self

    def to_policy(self, *, deadline: float, concurrency: int, attempt_timeout: float) -> Policy:
        # The pipeline gives an attempt `read` seconds while a retry may follow it, and the last
        # attempt all the time left: the per-attempt timeout is CHAT_LLM_TIMEOUT.
        return Policy(
            deadline=deadline,
            timeouts=Timeouts(
                connect=min(5.0, attempt_timeout), read=attempt_timeout, write=attempt_timeout, pool=attempt_timeout
            ),
            bulkhead=concurrency,
            **self.model_dump(),  # every field is named as Policy names it
        )


class ModelEndpointSettings(BaseModel):
    """One further OpenAI-compatible endpoint of the fallback chain (CHAT_LLM_FALLBACKS)."""

    model_config = ConfigDict(extra="forbid")

    base_url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
    model: Annotated[str, StringConstraints(min_length=1)]
    api_key: SecretStr | None = None


OFFLINE = "offline"

# An entry is an endpoint object or the string "offline"; the discriminator makes a bad object's
# errors name only the object's own fields.
FallbackEntry = Annotated[
    Annotated[ModelEndpointSettings, Tag("endpoint")] | Annotated[Literal["offline"], Tag("offline")],
    Discriminator(lambda entry: "offline" if isinstance(entry, str) else "endpoint"),
]


def _record_policy() -> PolicySettings:
    # Records leave the request path through the outbox: they can afford more patience. A few
    # batch calls a second at most is too little traffic for a failure rate to mean much:
    # consecutive counting stops a dead analytics after a handful of batches. The breaker probes
    # every second: a full outbox waits for analytics to come back to accept chats.
    return PolicySettings(
        deadline=3.0,
        read_timeout=2.0,
        connect_timeout=0.5,
        write_timeout=1.0,
        pool_timeout=0.5,
        breaker_mode="consecutive",
        breaker_reset=1.0,
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_", env_nested_delimiter="__", extra="ignore")

    analytics_url: str = "http://localhost:8001"
    analytics_api_token: OptionalSecret = None
    analytics_read: PolicySettings = Field(default_factory=PolicySettings)
    analytics_record: PolicySettings = Field(default_factory=_record_policy)
    analytics_max_connections: int = Field(100, ge=1)

    outbox_path: str = "./data/chat-outbox.sqlite3"
    outbox_max_rows: int = Field(100_000, ge=1)
    outbox_reserve_bytes: int = Field(
        512 * 1024, ge=64 * 1024, description="Space kept free next to the outbox so that a full disk can still drain"
    )
    outbox_batch: int = Field(500, ge=1, le=1000)
    # 50 ms, not 5: under load a 5 ms linger sent one record per batch, and each batch costs an
    # analytics POST and three writer-thread round trips (~150-300 us of CPU per chat, measured).
    outbox_linger: float = Field(0.05, ge=0, description="Seconds to gather a batch before sending")
    outbox_append_timeout: float = Field(
        1.0,
        ge=0,
        description="Seconds a reply's record may wait for the outbox's writer thread to take it; past that the chat "
        "answers 503 and nothing is recorded, and chats get 503 and /readyz fails (a stalled disk) until a write "
        "makes it through in time again. 0: wait however long it takes",
    )
    shutdown_flush_seconds: float = Field(5.0, ge=0)

    llm_provider: Literal["auto", "offline", "openai"] = "auto"
    model: str = "gpt-4o"
    openai_api_key: OptionalSecret = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "CHAT_OPENAI_API_KEY"))
    openai_base_url: OptionalText = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL", "CHAT_OPENAI_BASE_URL"))
    llm_timeout: float = Field(20.0, gt=0, description="Per model-call attempt, seconds")
    llm_max_concurrency: int = Field(100, ge=1, description="Model calls in flight per endpoint; more fail fast")
    llm_fallbacks: list[FallbackEntry] = Field(default_factory=list)
    llm_policy: ModelPolicySettings = Field(default_factory=ModelPolicySettings)
    llm_strict_responses: bool = Field(True, description="Validate provider answers against the OpenAI schema")
    llm_max_retries: int | None = Field(None, description="Gone; set to anything, start-up fails with a pointer")
    run_deadline: float = Field(45.0, gt=0, description="Whole agent run, tools included, seconds")
    max_turns: int = Field(6, ge=1)
    tracing_enabled: bool = False
    trace_content: bool = Field(False, description="Put message text and replies in OpenTelemetry span attributes")

    max_text_chars: int = Field(8000, ge=1)
    max_body_bytes: int = Field(65_536, ge=1024)
    cors_origins: list[str] = ["http://localhost:3000"]

    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)

    rate_limit_per_minute: int | None = Field(None, ge=1, description="Chats per user per minute; off when unset")
    redis_url: OptionalText = None
    rate_limit_prefix: str = Field("chat-rate", min_length=1, description="Prefix of the rate-limit keys in Redis")

    # Conversations and idempotent chats (docs/conversations.md).
    sessions_url: OptionalText = Field(
        None, description="sqlite:///file, postgresql://..., redis://..., or off; default: a SQLite file next to the outbox"
    )
    session_max_items: int = Field(100, ge=2, description="Items kept per conversation (most recent); a turn is 2 or more")
    session_ttl: float = Field(7 * 24 * 3600.0, gt=0, description="Seconds a conversation is kept after its last turn")
    session_timeout: float = Field(0.5, gt=0, description="Seconds per session store call")
    session_lock_wait: float = Field(5.0, ge=0, description="Seconds a message waits for its conversation's run, then 409")
    session_breaker: SessionBreakerSettings = Field(default_factory=SessionBreakerSettings)
    idempotency_ttl: float = Field(24 * 3600.0, gt=0, description="Seconds an Idempotency-Key's reply is kept")

    # End-user authentication: off unless a secret or a JWKS URL is set (docs/auth.md).
    auth_jwt_secret: OptionalSecret = Field(None, description="HS256 shared secret, at least 32 bytes")
    auth_jwks_url: OptionalText = Field(None, description="The identity provider's JWK set (https, or http on loopback)")
    auth_issuer: OptionalText = None
    auth_audience: OptionalText = None
    auth_algorithms: list[str] | None = Field(None, description="Default: HS256 with a secret; RS256 and ES256 with JWKS")
    auth_leeway: float = Field(30.0, ge=0, le=300, description="Seconds of clock skew allowed on exp and nbf")
    auth_cache_size: int = Field(4096, ge=0, description="Verified tokens remembered until they expire; 0 turns it off")
    auth_jwks_timeout: float = Field(2.0, gt=0, le=30, description="Seconds per JWKS fetch")
    auth_jwks_refresh_seconds: float = Field(300.0, gt=0, description="Background refetch period")
    auth_jwks_cooldown_seconds: float = Field(10.0, gt=0, description="Least time between fetches for unknown kids or retries")

    log_level: str = "INFO"
    log_format: LogFormat = "auto"

    @field_validator("llm_max_retries")
    @classmethod
    def _max_retries_is_gone(cls, value: int | None) -> None:
        if value is not None:
            raise ValueError(
                "CHAT_LLM_MAX_RETRIES is gone: the openai client no longer retries; "
                "set CHAT_LLM_POLICY__ATTEMPTS (attempts per endpoint, retries + 1) instead"
            )

    @field_validator("llm_fallbacks")
    @classmethod
    def _offline_comes_last(cls, chain: list[FallbackEntry]) -> list[FallbackEntry]:
        if OFFLINE in chain[:-1]:
            raise ValueError('"offline" may only be the last entry of CHAT_LLM_FALLBACKS (the last resort)')
        return chain

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        """Refuse at start-up any auth configuration that would run weaker than it looks."""
        secret, url = self.auth_jwt_secret, self.auth_jwks_url
        if secret is not None and url is not None:
            raise ValueError("set CHAT_AUTH_JWT_SECRET or CHAT_AUTH_JWKS_URL, not both")
        if secret is None and url is None:
            if self.auth_issuer or self.auth_audience or self.auth_algorithms:
                raise ValueError("CHAT_AUTH_* is set but auth is off: set CHAT_AUTH_JWT_SECRET or CHAT_AUTH_JWKS_URL")
            return self
        allowed = HMAC_ALGORITHMS if secret is not None else ASYMMETRIC_ALGORITHMS
        algorithms = self.auth_algorithms or (["HS256"] if secret is not None else ["RS256", "ES256"])
        if not set(algorithms) <= allowed:
            raise ValueError(f"CHAT_AUTH_ALGORITHMS must be among {sorted(allowed)} in this mode")
        self.auth_algorithms = sorted(set(algorithms))
        if secret is not None:
            needed = max(HMAC_MIN_BYTES[alg] for alg in algorithms)
            if len(secret.get_secret_value().encode()) < needed:
                raise ValueError(f"CHAT_AUTH_JWT_SECRET must be at least {needed} bytes (openssl rand -hex 32)")
        elif url is not None:
            try:
                parsed = httpx.URL(url)
            except httpx.InvalidURL as error:
                raise ValueError("CHAT_AUTH_JWKS_URL is not a URL") from error
            if not (parsed.scheme == "https" or (parsed.scheme == "http" and parsed.host in LOOPBACK_HOSTS)):
                raise ValueError("CHAT_AUTH_JWKS_URL must be https (plain http only on the loopback interface)")
        return self

    @property
    def auth_enabled(self) -> bool:
        return self.auth_jwt_secret is not None or self.auth_jwks_url is not None

    @property
    def use_openai(self) -> bool:
        if self.llm_provider == "auto":
            return self.openai_api_key is not None
        return self.llm_provider == "openai"
