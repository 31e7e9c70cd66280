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
    log_level: str = "INFO"

    log_format: LogFormat = "auto"
