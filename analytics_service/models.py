"""Request and response bodies of the analytics API."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from servicekit.validation import UserId

MessageId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]


class Analytics(BaseModel):
    message_count: int


class RecordMessage(BaseModel):
    """One message to count; `message_id` is an idempotency key per user."""

    model_config = ConfigDict(extra="forbid")

    message_id: MessageId
    timestamp: AwareDatetime


class BatchItem(RecordMessage):
    user_id: UserId


class RecordBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItem] = Field(min_length=1)


class Recorded(BaseModel):
    user_id: str
    message_id: str
    message_count: int
    duplicate: bool


class BatchResult(BaseModel):
    results: list[Recorded]
