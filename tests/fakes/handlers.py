"""Misbehaving peers for `httpx.MockTransport`."""

from __future__ import annotations

import asyncio

import httpx


def refuse(_: httpx.Request) -> httpx.Response:
    """A peer that is not listening."""
    raise httpx.ConnectError("connection refused")


async def hang(_: httpx.Request) -> httpx.Response:
    """A peer that accepts the request and never answers."""
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")
