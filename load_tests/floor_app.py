"""The benchmark's floor: parse the same `Message`, make one pooled GET to analytics, answer.

`uvicorn load_tests.floor_app:app`; reads ANALYTICS_URL (default http://127.0.0.1:8001) and
FLOOR_TRANSPORT: `httpx` (httpx's default pool) or `aiohttp` (`servicekit.transport.AiohttpTransport`,
the transport chat uses).

With FLOOR_MODEL_URL (an OpenAI-compatible base URL) it is the model path's floor: after the
GET it makes one chat-completions call with the official openai client, defaults and all, on
FLOOR_MODEL_CLIENT `aiohttp` (`openai.DefaultAioHttpClient`, the default) or `httpx2` (the
client's own default pool), and answers with the model's text. Nothing else: no agent, no
resilience, no record.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import openai
from fastapi import FastAPI, Request

from chat_service.analytics_client import path_segment
from chat_service.models import Message
from servicekit.transport import AiohttpTransport


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
    url = os.environ.get("ANALYTICS_URL", "http://127.0.0.1:8001")
    transport = AiohttpTransport() if os.environ.get("FLOOR_TRANSPORT") == "aiohttp" else None
    async with AsyncExitStack() as resources:
        client = await resources.enter_async_context(httpx.AsyncClient(base_url=url, transport=transport))
        model: openai.AsyncOpenAI | None = None
        if model_url := os.environ.get("FLOOR_MODEL_URL"):
            aiohttp = os.environ.get("FLOOR_MODEL_CLIENT", "aiohttp") == "aiohttp"
            http_client = openai.DefaultAioHttpClient() if aiohttp else openai.DefaultAsyncHttpxClient()
            model = await resources.enter_async_context(
                openai.AsyncOpenAI(api_key="sk-floor", base_url=model_url, max_retries=0, http_client=http_client)
            )
        yield {"client": client, "model": model}


app = FastAPI(lifespan=lifespan)


@app.post("/chat/")
async def chat(message: Message, request: Request) -> dict[str, Any]:
    """Floor: one GET (and, on the model path, one chat completion), no agent, no record."""
    response = await request.state.client.get("/analytics/" + path_segment(message.user_id))
    count = response.json().get("message_count", 0) if response.status_code == 200 else 0
    reply = f"{count} messages"
    model: openai.AsyncOpenAI | None = request.state.model
    if model is not None:
        completion = await model.chat.completions.create(
            model="floor",
            messages=[
                {"role": "system", "content": f"You are a helpful chatbot. The user has sent {count} messages so far."},
                {"role": "user", "content": message.text},
            ],
        )
        reply = completion.choices[0].message.content or ""
    return {"user_id": message.user_id, "reply": reply, "metadata": message.metadata.model_dump(mode="json")}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness."""
    return {"status": "ok"}
