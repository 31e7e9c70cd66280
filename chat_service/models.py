"""Request and response bodies of the chat API (the tutorial's models, hardened).

The tutorial calls them `Message` and `Response`; the schema names them `ChatMessage` and
`ChatReply`, because `Response` collides with generated clients' own `Response` type. The JSON
is the tutorial's.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, RootModel, StringConstraints

from servicekit.validation import KEY_PATTERN, IsoDatetime, UserId

MAX_TEXT_CHARS = 100_000  # a hard ceiling; CHAT_MAX_TEXT_CHARS sets the working cap below it

# One character that is white space neither to JSON Schema (ECMA-262 `\s`) nor to Python
# (`str.isspace`, which is also what Python's `\s` means): the two disagree on U+001C-U+001F and
# U+0085 (space to Python only) and U+FEFF (space to ECMA only). Naming the union in both engines
# makes the documented pattern and the server's blank check the same rule, so a schema-valid
# text such as "\u0085" is never refused as blank.
VISIBLE_CHARACTER = r"[^\s\u001c-\u001f\u0085\ufeff]"
_VISIBLE = re.compile(VISIBLE_CHARACTER)


def is_blank(text: str) -> bool:
    """True when the text has no character that either JSON Schema or Python counts as visible."""
    return _VISIBLE.search(text) is None


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
SessionId = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
UtcDatetime = Annotated[IsoDatetime, AfterValidator(_as_utc)]

TUTORIAL_MESSAGE: dict[str, JsonValue] = {
    "user_id": "alice",
    "text": "Hello, how are you?",
    "metadata": {"timestamp": "2025-04-06T12:00:00Z", "session_id": "123e4567-e89b-12d3-a456-426614174000"},
    "tags": ["greeting"],
}


class Metadata(BaseModel):
    """When the message was sent and the conversation it belongs to."""

    model_config = ConfigDict(extra="forbid")

    timestamp: UtcDatetime = Field(
        default_factory=_utc_now,
        description="ISO 8601 (an integer is refused); without an offset it is read as UTC. Replies carry UTC.",
    )
    session_id: SessionId = Field(
        default_factory=lambda: str(uuid.uuid4()),
        description="The conversation: send the same id again to continue it. Without one the message is a "
        "one-off (nothing is stored) and the reply carries a new UUID",
    )


class ChatMessage(BaseModel):
    """A message to the agent (the tutorial's `Message`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [TUTORIAL_MESSAGE]})

    user_id: UserId
    # Blank text answers the tutorial's 400 (not 422), so the pattern is documented, not enforced here.
    text: Annotated[
        str,
        StringConstraints(max_length=MAX_TEXT_CHARS),
        Field(description="What the user says; not blank", json_schema_extra={"pattern": VISIBLE_CHARACTER}),
    ]
    metadata: Metadata = Field(default_factory=Metadata)
    tags: Annotated[list[Tag], Field(max_length=16, description="At most 16, each 1-64 characters")] | None = None

    @property
    def conversation_id(self) -> str | None:
        """The session id when the client named one; None for a one-off message, which nothing stores."""
        # Storing every unnamed message would keep a conversation nobody can continue for CHAT_SESSION_TTL.
        return self.metadata.session_id if "session_id" in self.metadata.model_fields_set else None


class ReplyMetadata(Metadata):
    """The message's metadata, echoed; `fallback` appears only on a degraded reply."""

    fallback: Literal["offline"] | None = Field(
        None, description="'offline' when the offline model answered because no model endpoint could; absent otherwise"
    )


class ChatReply(BaseModel):
    """The agent's answer (the tutorial's `Response`)."""

    user_id: str
    reply: str = Field(description="The agent's answer, personalized with the user's message count")
    metadata: ReplyMetadata


# The tutorial's names, for code that imports them; the schema and the clients use the names above.
Message = ChatMessage
Response = ChatReply


class SessionTurn(BaseModel):
    """One completed exchange of a conversation."""

    at: str = Field(description="When the turn was stored (ISO 8601, UTC)")
    text: str = Field(description="What the user said")
    reply: str = Field(description="The agent's answer")


class SessionHistory(BaseModel):
    """A user's conversation, oldest turn first (at most CHAT_SESSION_MAX_ITEMS items are kept)."""

    user_id: str
    session_id: str
    turns: list[SessionTurn]


class UserInfo(BaseModel):
    """The tutorial's user echo."""

    user_id: str
    role: str


class UserAnalytics(BaseModel):
    """A user's count as chat sees it; `source` says whether analytics answered."""

    user_id: str
    message_count: int
    source: str = Field(description="'analytics', or the fallback reason when analytics did not answer")


class Welcome(BaseModel):
    message: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """`ok`, or `unavailable` with why the outbox cannot take records."""

    status: Literal["ok", "unavailable"]
    outbox: str | None = Field(
        None, description="When unavailable: disk_full, at_bound, stalled, or the error that keeps the outbox from opening"
    )


class DependencyReport(RootModel[dict[str, Any]]):
    """Analytics' breakers per pipeline, the outbox, the LLM provider: an open object, for operators."""
