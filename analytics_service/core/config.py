"""Analytics settings, read from ANALYTICS_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from servicekit.logging import LogFormat
from servicekit.validation import OptionalSecret


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYTICS_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./data/analytics.sqlite3",
        description="sqlite:///relative/path, sqlite:////absolute/path, or postgresql://...",
    )
    api_token: OptionalSecret = Field(None, description="When set, every /analytics and /messages call needs it")
    seed_demo_data: bool = Field(False, description="Load the tutorial's demo data (alice 5, bob 3) on start")
    max_batch: int = Field(1000, ge=1, le=10000, description="Most records in one batch call")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Request bodies over this answer 413")
    cors_origins: list[str] = Field(["http://localhost:3000", "http://localhost:8000"])
    postgres_pool_size: int = Field(10, ge=1)
    database_timeout: float = Field(1.0, gt=0, description="Seconds to connect, or to wait for a connection or SQLite's lock")
    database_statement_timeout: float = Field(2.0, gt=0, description="Seconds one PostgreSQL statement may take")
    database_failures: int = Field(3, ge=1, description="Outage errors in a row after which requests are refused at once")
    database_retry_after: float = Field(2.0, gt=0, description="Seconds between probes of a database that is down")
    log_level: str = "INFO"

    log_format: LogFormat = "auto"
