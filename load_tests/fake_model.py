"""A switchable fake OpenAI-compatible chat-completions server, run as a real uvicorn process.

`uvicorn load_tests.fake_model:create_app --factory`; tests and benchmarks start it through
`fake_model_process()` and steer it over HTTP:

- `POST /v1/chat/completions`: answers like a small model (it calls `get_current_time` when
  asked for the time, then states the user's count read from the system prompt), plain JSON or,
  with `"stream": true`, SSE chat-completion chunks.
- `POST /control` `{"mode", "think", "retry_after"}` (any subset) switches the behaviour:
  `ok`; an HTTP status such as `"503"`, `"500"` or `"429"` (with `Retry-After: retry_after`
  when set); `hang` (never answers, until the client goes away); `garbage` (200, not JSON);
  `invalid_json` (200, `application/json`, broken); `empty` (200, an empty reply); `stall` and
  `cut` (a stream sends its first chunk, then hangs or drops the connection); `stall_mid` and
  `cut_mid` (the same after the first word of the reply). `think` is the seconds an answer
  takes (a larger one makes a slow model).
- `GET /stats` counts requests received and answers given, and the streams whose client hung up
  before their end (`streams_abandoned`, the last at `abandoned_at`, a Unix time); `POST /stats/reset` zeroes them;
  `GET /requests` shows the last requests (body, authorization and traceparent headers).

`FAKE_MODEL_NAME` names the server in its replies ("<name> here. ..."), `FAKE_MODEL_THINK`
sets the initial think time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .processes import ServiceProcess

_COUNT = re.compile(r"has sent (\d+) messages?")
MODES = frozenset({"ok", "hang", "garbage", "invalid_json", "empty", "stall", "cut", "stall_mid", "cut_mid"})


@dataclass
class FakeState:
    name: str
    mode: str = "ok"
    think: float = 0.0
    retry_after: str | None = None
    requests: int = 0
    answered: int = 0
    streams_abandoned: int = 0
    abandoned_at: float | None = None
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "answered": self.answered,
            "mode": self.mode,
            "think": self.think,
            "streams_abandoned": self.streams_abandoned,
            "abandoned_at": self.abandoned_at,
        }


def _plural(count: str) -> str:
    return f"{count} message" if count == "1" else f"{count} messages"


def _reply(state: FakeState, body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message: a time tool call first when asked for the time, then the answer."""
    messages = body.get("messages") or []
    system = next((str(m.get("content")) for m in messages if m.get("role") == "system"), "")
    found = _COUNT.search(system)
    tool_results = [m for m in messages if m.get("role") == "tool"]
    last_user = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    if "time" in last_user.lower() and not tool_results and body.get("tools"):
        call = {"id": "call_1", "type": "function", "function": {"name": "get_current_time", "arguments": "{}"}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if state.mode == "empty":
        return {"role": "assistant", "content": ""}
    text = f"{state.name} here. You have sent {_plural(found.group(1)) if found else '? messages'}."
    if tool_results:
        text += f" Tool said: {tool_results[-1].get('content')}."
    return {"role": "assistant", "content": text}


def _usage(body: dict[str, Any], message: dict[str, Any]) -> dict[str, int]:
    prompt = len(json.dumps(body.get("messages"))) // 4
    completion = len(str(message.get("content") or "").split()) + len(message.get("tool_calls") or [])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(number: int, message: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def _chunks(number: int, message: dict[str, Any], usage: dict[str, int] | None) -> list[dict[str, Any]]:
    """The same answer as chat-completion chunks: role, content word by word, finish, usage."""
    base = {"id": f"chatcmpl-{number}", "object": "chat.completion.chunk", "created": int(time.time()), "model": "fake"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if message.get("tool_calls"):
        for index, call in enumerate(message["tool_calls"]):
            chunks.append(chunk({"tool_calls": [{"index": index, **call}]}))
        chunks.append(chunk({}, "tool_calls"))
    else:
        words = str(message.get("content") or "").split(" ")
        chunks += [chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(words) if word]
        chunks.append(chunk({}, "stop"))
    if usage is not None:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


async def _until_disconnected(request: Request) -> None:
    """Wait, without polling, until the client goes away (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(state: FakeState, chunks: list[dict[str, Any]], mode: str) -> AsyncIterator[bytes]:
    # Chunk 0 carries the role only, chunk 1 the first word: "_mid" modes act after the first word.
    where = 2 if mode.endswith("_mid") else 1
    try:
        for index, chunk in enumerate(chunks):
            if index == where and mode.startswith("stall"):
                await asyncio.Event().wait()  # Starlette cancels the stream when the client goes away
            if index == where and mode.startswith("cut"):
                raise ConnectionAbortedError("the fake model drops the stream on purpose")
            yield f"data: {json.dumps(chunk)}\n\n".encode()
    except asyncio.CancelledError:
        state.streams_abandoned += 1
        state.abandoned_at = time.time()
        raise
    state.answered += 1
    yield b"data: [DONE]\n\n"


async def completions(request: Request) -> Response:
    state: FakeState = request.app.state.fake
    body = await request.json()
    state.requests += 1
    state.recent.append(
        {"body": body, "authorization": request.headers.get("authorization"), "traceparent": request.headers.get("traceparent")}
    )
    mode = state.mode
    if mode.isdigit():
        headers = {"retry-after": state.retry_after} if state.retry_after else None
        return JSONResponse({"error": {"message": f"fake {mode}", "type": "fake"}}, status_code=int(mode), headers=headers)
    if mode == "hang" or (mode.startswith(("stall", "cut")) and not body.get("stream")):
        await _until_disconnected(request)
        return Response(status_code=499)
    if state.think:
        await asyncio.sleep(state.think)
    if mode == "garbage":
        state.answered += 1
        return PlainTextResponse("this is not json")
    if mode == "invalid_json":
        state.answered += 1
        return Response('{"id": "chatcmpl-1", "choices": [', media_type="application/json")
    message = _reply(state, body)
    usage = _usage(body, message)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = _chunks(state.requests, message, usage if include_usage else None)
        return StreamingResponse(_stream(state, chunks, mode), media_type="text/event-stream")
    state.answered += 1
    return JSONResponse(_completion(state.requests, message, usage))


async def control(request: Request) -> Response:
    state: FakeState = request.app.state.fake
    change = await request.json()
    mode = str(change.get("mode", state.mode))
    if mode not in MODES and not (mode.isdigit() and 400 <= int(mode) <= 599):
        return JSONResponse({"detail": f"unknown mode {mode!r}"}, status_code=422)
    state.mode = mode
    state.think = float(change.get("think", state.think))
    state.retry_after = change.get("retry_after", state.retry_after)
    return JSONResponse(state.stats())


async def stats(request: Request) -> Response:
    return JSONResponse(request.app.state.fake.stats())


async def reset(request: Request) -> Response:
    state: FakeState = request.app.state.fake
    state.requests = state.answered = state.streams_abandoned = 0
    state.abandoned_at = None
    state.recent.clear()
    return JSONResponse(state.stats())


async def recent(request: Request) -> Response:
    return JSONResponse(list(request.app.state.fake.recent))


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/control", control, methods=["POST"]),
            Route("/stats", stats),
            Route("/stats/reset", reset, methods=["POST"]),
            Route("/requests", recent),
            Route("/healthz", health),
        ]
    )
    app.state.fake = FakeState(
        name=os.environ.get("FAKE_MODEL_NAME", "Fake LLM"), think=float(os.environ.get("FAKE_MODEL_THINK", "0"))
    )
    return app


def fake_model_process(name: str, *, think: float = 0.0, log_path: Path | None = None, fast: bool = False) -> ServiceProcess:
    """A fake model server as a child process (not started); `fast` runs it on uvloop + httptools."""
    extra = ("--factory", "--loop", "uvloop", "--http", "httptools") if fast else ("--factory",)
    return ServiceProcess(
        "load_tests.fake_model:create_app",
        env={"FAKE_MODEL_NAME": name, "FAKE_MODEL_THINK": str(think)},
        log_path=log_path,
        extra_args=extra,
    )


def switch(url: str, **change: object) -> dict[str, Any]:
    """Change a running fake's mode, think time or Retry-After; returns its stats."""
    response = httpx.post(url + "/control", json=change, timeout=5)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def fake_stats(url: str) -> dict[str, Any]:
    response = httpx.get(url + "/stats", timeout=5)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]
