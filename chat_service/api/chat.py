"""POST /chat/ (and /chat): the tutorial's endpoint, made safe under concurrency and failure; POST /chat/stream."""

from __future__ import annotations

from fastapi import APIRouter, Request

from servicekit.logging import get_logger
from servicekit.openapi import EventStreamResponse, as_json, event_stream, responses

from ..agent.run import LLMFailure
from ..models import ChatMessage, ChatReply
from .auth import AUTH_DESCRIPTIONS, CallerDep
from .deps import TurnsDep
from .events import EVENT_DATA, EVENTS, stream_reply

router = APIRouter(tags=["chat"])
log = get_logger("chat")

ERRORS = responses(
    *(400, 401, 403, 413, 422, 429, 502, 503, 504),
    descriptions={
        **AUTH_DESCRIPTIONS,
        400: "The message text is blank",
        429: "Too many messages from this user (CHAT_RATE_LIMIT_PER_MINUTE); retry after Retry-After",
        502: "The model gave an answer we cannot use",
        503: "Chat is overloaded (admission control sheds the request before any work), or the model provider, "
        "the local outbox or the identity provider's keys are unavailable; retry after Retry-After when given",
        504: "The model did not answer within CHAT_RUN_DEADLINE",
    },
)
# The same statuses, as JSON, answered before the stream starts (after it: an `error` event).
STREAM_ERRORS = as_json(ERRORS)


@router.post(
    "/chat/", response_model=ChatReply, response_model_exclude_none=True, summary="Chat with the agent", responses=ERRORS
)
# The same, without the slash (no redirect). `fallback` appears in a reply's metadata only when set.
@router.post("/chat", response_model=ChatReply, response_model_exclude_none=True, include_in_schema=False)
async def chat(request: Request, message: ChatMessage, caller: CallerDep, turns: TurnsDep) -> ChatReply:
    """Answer a message, personalized with how many messages the user sent before it."""
    turn = await turns.begin(message, caller)
    reply = await turns.run(turn)
    return await turns.record(request, turn, reply)


@router.post(
    "/chat/stream",
    response_class=EventStreamResponse,
    summary="Chat with the agent, the reply streamed as it is written",
    responses={
        **event_stream(
            "Server-sent events: the reply in `delta` pieces as the model writes it, then `done` with the "
            "same body POST /chat/ answers, or `error` if the run fails after the stream started",
            EVENTS,
            EVENT_DATA,
        ),
        **STREAM_ERRORS,
    },
)
async def chat_stream(request: Request, message: ChatMessage, caller: CallerDep, turns: TurnsDep) -> EventStreamResponse:
    """Answer a message as server-sent events; errors before the first piece of the reply are plain JSON."""
    turn = await turns.begin(message, caller)
    run = turns.stream(turn)
    try:
        # The headers wait for the first piece of the reply: a run that fails before it answers
        # the usual JSON error, with its status.
        first = await run.next_delta()
    except LLMFailure as failure:
        turns.stream_ended(turn)
        raise turns.failed(failure) from None
    except BaseException:
        turns.stream_ended(turn)
        raise
    return stream_reply(request, turns, turn, run, first)
