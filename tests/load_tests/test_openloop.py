"""The open-loop generator keeps its rate whatever the answers, records each reply, and stops on demand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from load_tests.openloop import OpenLoop, ok_by_user


@pytest.fixture
async def chat_like() -> AsyncIterator[str]:
    """Answers `POST /chat/` on keep-alive connections: 200 for even users, 503 + Retry-After for odd ones."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
                user = json.loads(await reader.readexactly(length))["user_id"]
                if int(user.rsplit("-", 1)[1]) % 2 == 0:
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                else:
                    answer = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}"
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def test_every_request_is_sent_on_schedule_and_recorded_with_its_user_and_status(chat_like):
    load = OpenLoop(chat_like, rate=200, users=4, prefix="u")
    replies = await load.run(seconds=0.25)
    assert len(replies) == 50
    assert ok_by_user(replies) == {"u-0": 13, "u-2": 12}
    refused = [r for r in replies if r.status == 503]
    assert len(refused) == 25 and {r.retry_after for r in refused} == {"1"}
    sent = sorted(r.at for r in replies)
    assert sent[-1] - sent[0] == pytest.approx(49 / 200, abs=0.1), "open loop: the schedule, not the answers, sets the pace"
    assert all(r.done >= r.at for r in replies)


async def test_stop_ends_the_load_early_and_waits_for_what_was_sent(chat_like):
    load = OpenLoop(chat_like, rate=100, users=2, prefix="u")
    running = asyncio.create_task(load.run(seconds=30))
    await asyncio.sleep(0.2)
    load.stop()
    replies = await asyncio.wait_for(running, 5)
    assert 5 <= len(replies) <= 40
    assert {r.status for r in replies} == {200, 503}


async def test_a_server_that_is_gone_is_recorded_as_no_answer():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()
    replies = await OpenLoop(url, rate=100, timeout=1.0).run(seconds=0.05)
    assert len(replies) == 5 and {r.status for r in replies} == {0}
