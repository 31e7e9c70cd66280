"""Request and response bodies of the chat API (the tutorial's models, hardened)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from servicekit.validation import UserId

MAX_TEXT_CHARS = 100_000  # a hard ceiling; CHAT_MAX_TEXT_CHARS sets the working cap below it


def _as_utc(moment: datetime) -> datetime:
    # A naive timestamp is read as UTC; every timestamp leaves as timezone-aware UTC, except one
    # so close to year 1 or 9999 that UTC cannot hold it: that one keeps its own offset.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return moment


def _utc_now() -> datetime:
    return datetime.now(UTC)


Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: UtcDatetime = Field(default_factory=_utc_now)
    session_id: SessionId = Field(default_factory=lambda: str(uuid.uuid4()))


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    # Blank text answers the tutorial's 400 (not 422), so the pattern is documented, not enforced here.
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS), Field(json_schema_extra={"pattern": r"\S"})]
    metadata: Metadata = Field(default_factory=Metadata)
    tags: Annotated[list[Tag], Field(max_length=16)] | None = None


class ReplyMetadata(Metadata):
    """The request's metadata, echoed; `fallback` appears only on a degraded reply."""

    fallback: Literal["offline"] | None = Field(
        None, description="'offline' when the offline model answered because no model endpoint could; absent otherwise"
    )


class Response(BaseModel):
    user_id: str
    reply: str
    metadata: ReplyMetadata


class UserInfo(BaseModel):
    user_id: str
    role: str


class UserAnalytics(BaseModel):
    """A user's count as chat sees it; `source` says whether analytics answered."""

    user_id: str
    message_count: int
    source: str = Field(description="'analytics', or the fallback reason when analytics did not answer")
