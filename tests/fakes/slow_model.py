"""An OpenAI-compatible model that takes its time: `sleep=<seconds>` in the user's text sets how long.

For admission tests: runs that are still going when their client leaves. GET /calls counts the
calls that started and those that finished (a cancelled caller hangs up before the answer).
"""

from __future__ import annotations

import asyncio
import re
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CALLS = {"started": 0, "finished": 0}


async def completions(request: Request) -> Response:
    body = await request.json()
    CALLS["started"] += 1
    text = str(next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user"))
    delay = re.search(r"sleep=([0-9.]+)", text)
    await asyncio.sleep(float(delay.group(1)) if delay else 0.0)
    CALLS["finished"] += 1
    message = {"role": "assistant", "content": f"Slowly answered: {text}"}
    return JSONResponse(
        {
            "id": f"chatcmpl-{CALLS['started']}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "slow"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


async def calls(_: Request) -> Response:
    return JSONResponse(CALLS)


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/calls", calls),
        Route("/healthz", health),
    ]
)
