"""Chat, as a real process, in front of an analytics that speaks valid but less common HTTP/1.1.

The fake analytics answers each call in the next of three wire styles (1xx answers before the
200, a body delimited by the close, a chunked body with trailers), and on every connection left
idle it sends `408` and closes a moment later, as servers with short keep-alive timeouts do.
Every chat must carry its own user's count: a wrong or foreign count means a response was read
from the wrong request (the hand-written transport got 11 of 18 wrong here).
"""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import unquote

import httpx
import pytest

from load_tests.processes import ServiceProcess, chat_env
from tests.fakes.wire import WireRequest, WireServer

pytestmark = pytest.mark.integration

STYLES = ("early-hints", "close-delimited", "chunked-with-trailers")
IDLE_AFTER = 0.05  # seconds before an idle connection gets its 408
LINGER = 0.3  # the 408 waits on the open connection this long before the close


class WireStyleAnalytics:
    """Counts per user with idempotent records, answered in rotating wire styles."""

    def __init__(self, seeds: dict[str, int]) -> None:
        self.counts = dict(seeds)
        self.message_ids: set[str] = set()
        self.answers = 0
        self.timed_out: set[asyncio.StreamWriter] = set()
        self.server = WireServer(self.handle, on_idle=self.on_idle, idle_after=IDLE_AFTER)
        self.live: set[asyncio.StreamWriter] = set()

    async def handle(self, request: WireRequest, writer: asyncio.StreamWriter) -> bool:
        self.live.add(writer)
        if request.method == "GET" and request.target.startswith("/analytics/"):
            user = unquote(request.target.removeprefix("/analytics/"))
            if user not in self.counts:
                writer.write(b'HTTP/1.1 404 Not Found\r\nContent-Length: 28\r\n\r\n{"detail": "User not found"}')
                return True
            body = json.dumps({"message_count": self.counts[user]}).encode()
        elif request.method == "POST" and request.target == "/messages/batch":
            for item in json.loads(request.body)["items"]:
                if item["message_id"] not in self.message_ids:
                    self.message_ids.add(item["message_id"])
                    self.counts[item["user_id"]] = self.counts.get(item["user_id"], 0) + 1
            body = b'{"results": []}'
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        style = STYLES[self.answers % len(STYLES)]
        self.answers += 1
        if style == "early-hints":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
            await writer.drain()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return True
        if style == "close-delimited":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
            self.live.discard(writer)
            return False
        middle = len(body) // 2
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n%x;note=split\r\n%s\r\n0\r\nX-Checksum: %d\r\n\r\n"
            % (middle, body[:middle], len(body) - middle, body[middle:], sum(body))
        )
        return True

    async def on_idle(self, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        self.timed_out.add(writer)
        await asyncio.sleep(LINGER)
        self.live.discard(writer)
        return False

    def all_idle_connections_timed_out(self) -> bool:
        return self.live <= self.timed_out


async def wait_for(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_every_chat_carries_its_own_users_count_whatever_the_wire_style(tmp_path):
    users = {f"wire{n}": 100 * (n + 1) for n in range(6)}
    analytics = WireStyleAnalytics(users)
    async with analytics.server.running() as server:
        chat = ServiceProcess(
            "chat_service.main:app",
            log_path=tmp_path / "chat.log",
            env=chat_env(server.url, tmp_path / "outbox.sqlite3", CHAT_OUTBOX_LINGER="0"),
        )
        await asyncio.to_thread(chat.start)
        try:
            async with httpx.AsyncClient(base_url=chat.url, timeout=10) as client:
                counts_seen: list[tuple[str, int, int]] = []
                for round_number in range(3):
                    for user, seed in users.items():
                        # Each chat meets a pooled connection that has a 408 waiting on it.
                        await wait_for(analytics.all_idle_connections_timed_out)
                        reply = (await client.post("/chat/", json={"user_id": user, "text": "hi"})).json()["reply"]
                        seen = re.search(r"You have sent (\d+) messages", reply)
                        counts_seen.append((user, seed + round_number, int(seen.group(1)) if seen else -1))
                        try:
                            await wait_for(lambda user=user, n=seed + round_number + 1: analytics.counts[user] == n)
                        except TimeoutError:
                            pytest.fail(f"the record of {user}'s chat never arrived; (user, expected, seen): {counts_seen}")
        finally:
            await asyncio.to_thread(chat.stop)
    wrong = [(user, expected, seen) for user, expected, seen in counts_seen if seen != expected]
    assert len(counts_seen) == 18 and wrong == [], wrong
    # A third of the record answers are close-delimited and leave no idle connection behind;
    # every other chat found a 408 waiting on its pooled connection.
    assert len(analytics.timed_out) >= 12
    assert analytics.answers >= 36, "both reads and records went through the three styles"
