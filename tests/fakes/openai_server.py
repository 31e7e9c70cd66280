"""A tiny OpenAI-compatible chat-completions server for tests; the model name picks its behaviour.

fake-ok: answers, calling get_current_time first when asked for the time; fake-500, fake-429,
fake-hang and fake-garbage misbehave as named. GET /requests shows what it received.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

RECEIVED: list[dict[str, Any]] = []


def _completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{len(RECEIVED)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


async def completions(request: Request) -> Response:
    body = await request.json()
    RECEIVED.append({"body": body, "authorization": request.headers.get("authorization")})
    model = body.get("model")
    if model == "fake-500":
        return JSONResponse({"error": {"message": "boom"}}, status_code=500)
    if model == "fake-429":
        return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "7"})
    if model == "fake-hang":
        await asyncio.sleep(60)
    if model == "fake-garbage":
        return PlainTextResponse("this is not json")
    messages = body["messages"]
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    count = re.search(r"has sent (\d+) messages", system)
    tool_results = [m for m in messages if m["role"] == "tool"]
    last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if "time" in str(last_user).lower() and not tool_results and body.get("tools"):
        call = {"id": "call_1", "type": "function", "function": {"name": "get_current_time", "arguments": "{}"}}
        return JSONResponse(_completion({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"))
    text = f"Fake LLM here. You have sent {count.group(1) if count else '?'} messages."
    if tool_results:
        text += f" Tool said: {tool_results[-1]['content']}."
    return JSONResponse(_completion({"role": "assistant", "content": text}, "stop"))


async def requests_seen(_: Request) -> Response:
    return Response(json.dumps(RECEIVED), media_type="application/json")


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/requests", requests_seen),
        Route("/healthz", health),
    ]
)
