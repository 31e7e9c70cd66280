"""POST /chat/ (and /chat): the tutorial's endpoint, made safe under concurrency and failure; POST /chat/stream."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from fastapi import APIRouter, Request

from servicekit.logging import get_logger
from servicekit.openapi import EventStreamResponse, IdempotencyKey, as_json, event_stream, responses

from ..agent.run import LLMFailure
from ..models import ChatMessage, ChatReply
from ..sessions import idempotency
from .auth import AUTH_DESCRIPTIONS, CallerDep
from .deps import TurnsDep
from .events import EVENT_DATA, EVENTS, StreamedTurn, replay_reply, stream_reply

router = APIRouter(tags=["chat"])
log = get_logger("chat")

ERRORS = responses(
    *(400, 401, 403, 409, 413, 422, 429, 502, 503, 504),
    descriptions={
        **AUTH_DESCRIPTIONS,
        400: "The message text is blank",
        409: "The conversation is answering another message (waited CHAT_SESSION_LOCK_WAIT), "
        "or a request with this Idempotency-Key is still running",
        422: "The body is invalid, or this Idempotency-Key was used with a different body",
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
async def chat(
    request: Request,
    message: ChatMessage,
    caller: CallerDep,
    turns: TurnsDep,
    idempotency_key: IdempotencyKey = None,
) -> ChatReply:
    """Answer a message in its conversation, personalized with how many messages the user sent."""
    turns.check(message, caller)
    conversations = turns.conversations
    user_id = message.user_id  # the token's subject when auth is on
    # A retry of a keyed request answers the stored reply: no model run, no second record, and
    # no rate limit, analytics read or outbox space spent on it.
    claim = await idempotency.begin(conversations, user_id, idempotency_key, message.model_dump(mode="json", exclude_unset=True))
    if claim.replay is not None:
        return ChatReply.model_validate_json(claim.replay)
    async with claim:  # a refusal below frees the key
        turn = await turns.begin(message)
        # One run at a time per conversation; the turn is stored only if the reply completes.
        async with conversations.turn(user_id, message.conversation_id) as held:
            await asyncio.sleep(0)  # the next slice: the run (see ChatTurns.begin)
            reply = await turns.run(turn, history=held.history)
            answer = await turns.record(request, turn, reply, record_id=claim.record_id)
            await held.complete(reply.items)
        await claim.finish(answer.model_dump_json(exclude_none=True))
    return answer


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
async def chat_stream(
    request: Request,
    message: ChatMessage,
    caller: CallerDep,
    turns: TurnsDep,
    idempotency_key: IdempotencyKey = None,
) -> EventStreamResponse:
    """Answer a message in its conversation as server-sent events; errors before the first piece are plain JSON."""
    turns.check(message, caller)
    conversations = turns.conversations
    user_id = message.user_id  # the token's subject when auth is on
    claim = await idempotency.begin(conversations, user_id, idempotency_key, message.model_dump(mode="json", exclude_unset=True))
    if claim.replay is not None:
        return replay_reply(ChatReply.model_validate_json(claim.replay))
    # The key and the conversation stay held until the stream ends (StreamedTurn.close).
    held = AsyncExitStack()
    try:
        await held.enter_async_context(claim)
        turn = await turns.begin(message)
        conversation = await held.enter_async_context(conversations.turn(user_id, message.conversation_id))
        run = turns.stream(turn, history=conversation.history)
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
    except BaseException:
        await held.aclose()
        raise
    return stream_reply(StreamedTurn(request, turns, turn, run, held, conversation, claim), first)
