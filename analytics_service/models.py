"""Request and response bodies of the analytics API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from servicekit.validation import KEY_PATTERN, AwareIsoDatetime, UserId

MessageId = Annotated[
    str,
    StringConstraints(pattern=KEY_PATTERN),
    Field(description="1-128 of letters, digits, _ . : @ -; unique per user (an idempotency key)"),
]
Timestamp = Annotated[AwareIsoDatetime, Field(description="ISO 8601 with a UTC offset, e.g. 2025-04-06T12:00:00Z")]


class Analytics(BaseModel):
    """A user's message count."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"message_count": 5}]})

    message_count: int


class RecordMessage(BaseModel):
    """One message to count; `message_id` is an idempotency key per user."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"message_id": "m-1", "timestamp": "2025-04-06T12:00:00Z"}]}
    )

    message_id: MessageId
    timestamp: Timestamp


class BatchItem(BaseModel):
    """One message of a batch, with its user."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    message_id: MessageId
    timestamp: Timestamp


class RecordBatch(BaseModel):
    """Messages to count in one transaction (at most ANALYTICS_MAX_BATCH)."""

    model_config = ConfigDict(extra="forbid")

    items: list[BatchItem] = Field(min_length=1)


class Recorded(BaseModel):
    """What recording one message did."""

    user_id: str
    message_id: str
    message_count: int = Field(description="The user's count after this record")
    duplicate: bool = Field(description="True when this message_id was already counted for this user")


class BatchResult(BaseModel):
    """One result per item, in the batch's order."""

    results: list[Recorded]


class Welcome(BaseModel):
    message: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """`ok`, or `unavailable` with the database's error."""

    status: Literal["ok", "unavailable"]
    database: str = Field(description="ok, or the error the database raised")
