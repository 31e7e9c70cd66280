"""The server-sent events of POST /chat/stream: `delta`s of the reply, then `done` or `error`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from servicekit.admission import ClientGone
from servicekit.openapi import EventStreamResponse

from ..agent.run import LLMFailure
from ..agent.stream import StreamedRun
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
    """An event stream that calls `on_close` however it ends: sent, failed, or its client gone."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> None:
        # no-cache and no proxy buffering (nginx honours X-Accel-Buffering): each event leaves at once.
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Starlette stops the body as soon as the client disconnects (it listens for it),
            # which cancels the run where it waits; on_close then cancels what is left of it.
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def stream_reply(request: Request, turns: ChatTurns, turn: Turn, run: StreamedRun, first: str | None) -> ChatEventStream:
    """The response of a run whose first delta (None: it answered without one) is already here."""

    def close() -> None:
        run.cancel()
        turns.stream_ended(turn)

    return ChatEventStream(_events(request, turns, turn, run, first), on_close=close)


async def _events(request: Request, turns: ChatTurns, turn: Turn, run: StreamedRun, delta: str | None) -> AsyncIterator[bytes]:
    try:
        while delta is not None:
            yield sse("delta", StreamDelta(text=delta).model_dump_json())
            delta = await run.next_delta()
        answer = await turns.record(request, turn, run.reply)
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
