"""The server-sent events of POST /chat/stream: `delta`s of the reply, then `done` or `error`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from servicekit.admission import ClientGone
from servicekit.openapi import EventStreamResponse

from ..agent.run import LLMFailure
from ..agent.stream import StreamedRun
from ..models import ChatReply
from ..sessions import Claim
from ..sessions import Turn as Held
from .turns import ChatTurns, Turn


class StreamDelta(BaseModel):
    text: str = Field(description="The next piece of the reply")


class StreamError(BaseModel):
    status: int = Field(description="The status POST /chat/ would have answered: 502, 503 or 504")
    detail: str = Field(description="What went wrong, in words")


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


EVENTS = {
    "delta": 'The next piece of the reply: `{"text": "..."}`; the pieces joined are the reply as written',
    "done": "The last event: the same JSON body POST /chat/ answers (a ChatReply)",
    "error": 'The run failed after the stream started; the last event: `{"status": 504, "detail": "..."}`, '
    "with the status POST /chat/ would have answered",
}
EVENT_DATA = {
    "delta": _inline(StreamDelta),
    "done": {"$ref": "#/components/schemas/ChatReply"},
    "error": _inline(StreamError),
}


def sse(event: str, data: str) -> bytes:
    """One event; `data` is JSON on one line (JSON escapes newlines)."""
    return f"event: {event}\ndata: {data}\n\n".encode()


class ChatEventStream(EventStreamResponse):
    """An event stream that awaits `on_close` however it ends: sent, failed, or its client gone."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        # no-cache and no proxy buffering (nginx honours X-Accel-Buffering): each event leaves at once.
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Starlette stops the body as soon as the client disconnects (it listens for it),
            # which cancels the run where it waits; on_close then cancels what is left of it.
            await super().__call__(scope, receive, send)
        finally:
            # Here, not in the body's own finally: the body may never start (the client left
            # first), and inside it a disconnect's cancel scope would cancel every cleanup await.
            if self.on_close is not None:
                await self.on_close()


class StreamedTurn:
    """A streamed run inside its conversation turn and key claim, both held until the stream ends.

    The reply is recorded, the turn stored and the key's reply kept in one task that a client
    leaving cannot cut in half (`commit`), before the `done` event; `close` then frees the
    conversation and the key. A stream that ends any other way stores nothing and frees both.
    """

    def __init__(
        self,
        request: Request,
        turns: ChatTurns,
        turn: Turn,
        run: StreamedRun,
        held: AsyncExitStack,
        conversation: Held,
        claim: Claim,
    ) -> None:
        self.request, self.turns, self.turn, self.run = request, turns, turn, run
        self._held, self._conversation, self._claim = held, conversation, claim
        self._commit: asyncio.Task[ChatReply] | None = None

    async def commit(self) -> ChatReply:
        """Record the finished reply, store the turn, keep the key's reply; raises like `record`."""
        self._commit = asyncio.create_task(self._committed())
        return await asyncio.shield(self._commit)

    async def _committed(self) -> ChatReply:
        reply = self.run.reply
        answer = await self.turns.record(self.request, self.turn, reply, record_id=self._claim.record_id)
        await self._conversation.complete(reply.items)
        await self._claim.finish(answer.model_dump_json(exclude_none=True))
        return answer

    async def close(self) -> None:
        self.run.cancel()
        self.turns.stream_ended(self.turn)
        if self._commit is not None:  # a client that left mid-commit: let it end before freeing
            await asyncio.wait([self._commit])
        await self._held.aclose()


def stream_reply(streamed: StreamedTurn, first: str | None) -> ChatEventStream:
    """The response of a run whose first delta (None: it answered without one) is already here."""
    return ChatEventStream(_events(streamed, first), on_close=streamed.close)


def replay_reply(answer: ChatReply) -> ChatEventStream:
    """A stored reply (an Idempotency-Key's retry): the whole text as one delta, then `done`."""

    async def events() -> AsyncIterator[bytes]:
        yield sse("delta", StreamDelta(text=answer.reply).model_dump_json())
        yield sse("done", answer.model_dump_json(exclude_none=True))

    return ChatEventStream(events())


async def _events(streamed: StreamedTurn, delta: str | None) -> AsyncIterator[bytes]:
    turns, run = streamed.turns, streamed.run
    try:
        while delta is not None:
            yield sse("delta", StreamDelta(text=delta).model_dump_json())
            delta = await run.next_delta()
        answer = await streamed.commit()
    except LLMFailure as failure:
        yield _error(turns.failed(failure))
        return
    except HTTPException as refused:  # the outbox refused the record
        yield _error(refused)
        return
    except ClientGone:  # it left just before the record: nothing recorded, nobody to tell
        return
    yield sse("done", answer.model_dump_json(exclude_none=True))


def _error(error: HTTPException) -> bytes:
    return sse("error", StreamError(status=error.status_code, detail=str(error.detail)).model_dump_json())
