"""The benchmark's floor: parse the same `Message`, make one pooled GET to analytics, answer.

`uvicorn load_tests.floor_app:app`; reads ANALYTICS_URL (default http://127.0.0.1:8001) and
FLOOR_TRANSPORT: `httpx` (httpx's default pool) or `aiohttp` (`servicekit.transport.AiohttpTransport`,
the transport chat uses).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request

from chat_service.analytics_client import path_segment
from chat_service.models import Message
from servicekit.transport import AiohttpTransport


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
    url = os.environ.get("ANALYTICS_URL", "http://127.0.0.1:8001")
    transport = AiohttpTransport() if os.environ.get("FLOOR_TRANSPORT") == "aiohttp" else None
    async with httpx.AsyncClient(base_url=url, transport=transport) as client:
        yield {"client": client}


app = FastAPI(lifespan=lifespan)


@app.post("/chat/")
async def chat(message: Message, request: Request) -> dict[str, Any]:
    """Floor: one GET, no agent, no record."""
    response = await request.state.client.get("/analytics/" + path_segment(message.user_id))
    count = response.json().get("message_count", 0) if response.status_code == 200 else 0
    return {"user_id": message.user_id, "reply": f"{count} messages", "metadata": message.metadata.model_dump(mode="json")}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness."""
    return {"status": "ok"}
