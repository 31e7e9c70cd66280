"""Whole turns, and lock takes and key claims idempotent for their token, on every store (real SQLite, PostgreSQL, Redis).

A take or a claim whose reply is lost or cut short by a cancelled request, a key's release and a key's
reply whose store failed: none holds the conversation or the key until its lease runs out."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chat_service.sessions import KeyInFlight, _conversations, idempotency
from chat_service.sessions._backend import Backend, IdempotencyRecord
from chat_service.sessions._conversations import Conversations
from chat_service.sessions._guarded import Guarded
from chat_service.sessions._keys import conversation_key, fingerprint, idempotency_key
from chat_service.sessions._open import make_backend
from chat_service.sessions._turns import keep_from
from load_tests.faultproxy import Fault, FaultProxy

from ..conftest import REDIS_URL
from .conftest import running_chat
from .test_sessions import say

MAX_ITEMS = 4


def conversations_on(backend: Backend, *, timeout: float = 2.0) -> Conversations:
    guarded = Guarded(timeout=timeout, on_failure=lambda operation, reason: None, emit=lambda event: None)
    return Conversations(backend, guarded, max_items=MAX_ITEMS, lock_wait=1.0, lease=30.0, idempotency_ttl=60)


def asked(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def answered(text: str) -> dict[str, Any]:
    return {"role": "assistant", "type": "message", "content": [{"type": "output_text", "text": text}]}


def tool(call_id: str) -> list[dict[str, Any]]:
    """A tool call and its output: a provider refuses the output when the call is not before it."""
    return [
        {"type": "function_call", "call_id": call_id, "name": "get_current_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": call_id, "output": "12:00"},
    ]


def plain(items: list[Any]) -> list[Any]:
    return [{k: v for k, v in item.items() if k != "_turn_at"} for item in items]


async def store_turn(conversations: Conversations, user: str, items: list[Any]) -> None:
    async with conversations.turn(user, "s-1") as turn:
        await turn.complete(items)


async def history(conversations: Conversations, user: str) -> list[Any]:
    async with conversations.turn(user, "s-1") as turn:  # left without completing: stores nothing
        return list(turn.history)


async def test_a_turn_longer_than_max_items_is_kept_whole_and_read_whole(backend):
    conversations, user = conversations_on(backend), f"u-{uuid.uuid4().hex[:8]}"
    long_turn = [asked("time twice?"), *tool("c1"), *tool("c2"), answered("12:00 and 12:00")]
    await store_turn(conversations, user, long_turn)
    stored = await backend.session(conversation_key(user, "s-1")).get_items()
    assert plain(stored) == long_turn  # 6 items, over MAX_ITEMS: half a turn would be an invalid history
    assert await history(conversations, user) == long_turn
    views = await conversations.turns(user, "s-1")
    assert [(view.text, view.reply) for view in views] == [("time twice?", "12:00 and 12:00")]

    await store_turn(conversations, user, [asked("thanks"), answered("welcome")])
    assert await history(conversations, user) == [asked("thanks"), answered("welcome")]  # the long turn goes whole


async def test_trimming_drops_whole_turns_and_keeps_every_turn_that_fits(backend):
    conversations, user = conversations_on(backend), f"u-{uuid.uuid4().hex[:8]}"
    key = conversation_key(user, "s-1")
    with_tool = [asked("time?"), *tool("c1"), answered("12:00")]
    await store_turn(conversations, user, [asked("hi"), answered("hello")])
    await store_turn(conversations, user, with_tool)
    assert plain(await backend.session(key).get_items()) == with_tool
    # MAX_ITEMS from the end would start at the tool output; its call would be gone.
    await store_turn(conversations, user, [asked("bye"), answered("see you")])
    assert plain(await backend.session(key).get_items()) == [asked("bye"), answered("see you")]
    await store_turn(conversations, user, [asked("back"), answered("welcome back")])
    expected = [asked("bye"), answered("see you"), asked("back"), answered("welcome back")]
    assert plain(await backend.session(key).get_items()) == expected  # two whole turns fit: both kept
    assert await history(conversations, user) == expected
    assert [view.text for view in await conversations.turns(user, "s-1")] == ["bye", "back"]


async def test_every_store_trims_exactly_where_the_rule_cuts(backend):
    # SQLite cuts in SQL (reading only the rows around the cut), the others in Python: one rule.
    rng = random.Random(7)
    cases = [([], 2), ([False, False], 2), ([False, True, False, True], 2), ([True, False, False, False], 2)]
    cases += [([rng.random() < 0.4 for _ in range(rng.randrange(1, 13))], rng.randrange(2, 9)) for _ in range(40)]
    for case, (starts, keep) in enumerate(cases):
        key = conversation_key(f"u-{uuid.uuid4().hex[:8]}", f"s-{case}")
        items = [asked(f"q{i}") if start else answered(f"a{i}") for i, start in enumerate(starts)]
        await backend.session(key).add_items(items)
        await backend.trim(key, keep)
        assert await backend.session(key).get_items() == items[keep_from(starts, keep) :], (starts, keep)


async def test_a_close_retried_after_its_unlock_failed_stores_the_turn_once(backend, monkeypatch):
    """Redis stores, then trims and unlocks, in separate calls: a retry must not store again.

    (SQLite and PostgreSQL close in one transaction that takes no unlock call; there the close
    simply succeeds.)
    """
    conversations = conversations_on(backend)
    end_turn = getattr(backend, "_end_turn", None) if backend.name == "redis" else None
    failed: list[int] = []
    if end_turn is not None:

        async def end_turn_failing_once(**kwargs: Any) -> Any:
            if not failed:
                failed.append(1)
                raise ConnectionError("the unlock's reply was lost")
            return await end_turn(**kwargs)

        monkeypatch.setattr(backend, "_end_turn", end_turn_failing_once)
    turn = [asked("first"), answered("one")]  # short: twice over would still fit MAX_ITEMS and show
    user = f"u-{uuid.uuid4().hex}"  # Redis keeps what earlier runs stored
    await store_turn(conversations, user, turn)
    await conversations.drain()  # the background retry has run
    assert plain(await history(conversations, user)) == turn
    assert failed or end_turn is None


async def test_taking_a_lock_again_with_the_same_token_succeeds_and_with_another_fails(backend):
    key = conversation_key(f"u-{uuid.uuid4().hex[:8]}", "s-1")
    assert await backend.open_turn(key, "run-1", 30.0) == []
    # The first take's reply was lost (say a timeout after the store applied it): the retry is ours.
    assert await backend.open_turn(key, "run-1", 30.0) == []
    assert await backend.open_turn(key, "run-2", 30.0) is None
    await backend.close_turn(key, "run-1", None, None)
    assert await backend.open_turn(key, "run-2", 30.0) == []
    await backend.close_turn(key, "run-2", None, None)


async def test_claiming_a_key_again_with_the_same_token_succeeds_and_with_another_finds_it(backend):
    key = f"1:u:{uuid.uuid4().hex}"
    mine = IdempotencyRecord("run-1", "body")
    assert await backend.claim(key, mine, 30.0) is None
    assert await backend.claim(key, mine, 30.0) is None  # a retried claim whose reply was lost: still ours
    assert await backend.claim(key, IdempotencyRecord("run-2", "body"), 30.0) == mine
    await backend.release(key, "run-1")


@pytest.fixture
async def redis_behind_proxy() -> AsyncIterator[tuple[FaultProxy, Conversations]]:
    """Conversations on the real Redis through a fault proxy; socket timeout 0.3 s."""
    host, port = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
    proxy = await FaultProxy((host, int(port))).start()
    backend = make_backend(f"redis://127.0.0.1:{proxy.port}/0", ttl=3600, timeout=0.3)
    conversations = conversations_on(backend)
    try:
        yield proxy, conversations
    finally:
        await conversations.drain()
        await backend.close()
        await proxy.stop()


@pytest.mark.redis
@pytest.mark.parametrize("fault", [Fault("cut", 1.0), Fault("latency", 1.0)], ids=["reply-reset", "reply-too-late"])
async def test_a_lock_take_whose_reply_was_lost_does_not_lock_the_conversation_for_the_lease(redis_behind_proxy, fault):
    proxy, conversations = redis_behind_proxy
    user = f"u-{uuid.uuid4().hex[:8]}"
    await store_turn(conversations, user, [asked("hi"), answered("hello")])
    proxy.set(fault)  # Redis takes the lock; its reply is reset, or arrives after the 0.3 s timeout
    async with conversations.turn(user, "s-1") as degraded:
        assert degraded.history == []  # the take failed as far as chat knows: no history, nothing stored
    proxy.set(Fault("pass"))
    started = time.monotonic()
    assert await history(conversations, user) == [asked("hi"), answered("hello")]  # not a 409
    assert time.monotonic() - started < 1.0  # freed by the failed take's own token, not by the 30 s lease


async def claim_when_free(conversations: Conversations, user: str, body: dict[str, Any]) -> idempotency.Claim:
    """Claim key `order-7` as a client would retry it: again after each 409, for up to a second."""
    deadline = time.monotonic() + 1.0  # well under the 30 s lease
    while True:
        try:
            return await idempotency.begin(conversations, user, "order-7", body)
        except KeyInFlight:
            assert time.monotonic() < deadline, "the key stayed held: its holder's token was never freed"
            await asyncio.sleep(0.05)


@pytest.mark.redis
@pytest.mark.parametrize("fault", [Fault("cut", 1.0), Fault("latency", 1.0)], ids=["reply-reset", "reply-too-late"])
async def test_a_key_claim_whose_reply_was_lost_does_not_hold_the_key_for_the_lease(redis_behind_proxy, fault):
    proxy, conversations = redis_behind_proxy
    user, body = f"u-{uuid.uuid4().hex[:8]}", {"text": "book it"}
    assert await history(conversations, user) == []  # connected: the fault meets the claim, not the handshake
    proxy.set(fault)  # Redis stores the claim; its reply is reset, or arrives after the 0.3 s timeout
    async with await idempotency.begin(conversations, user, "order-7", body) as degraded:
        assert degraded.replay is None and degraded.record_id is not None  # runs unguarded, counted once
    proxy.set(Fault("pass"))
    retried = await claim_when_free(conversations, user, body)  # not a 409 for the lease
    async with retried:
        await retried.finish("booked")
    replayed = await idempotency.begin(conversations, user, "order-7", body)
    assert replayed.replay == "booked" and replayed.record_id == retried.record_id == degraded.record_id


@pytest.mark.redis
async def test_a_failed_run_whose_key_release_was_lost_frees_the_key_in_the_background(redis_behind_proxy):
    proxy, conversations = redis_behind_proxy
    user, body = f"u-{uuid.uuid4().hex[:8]}", {"text": "book it"}
    claim = await idempotency.begin(conversations, user, "order-7", body)
    with pytest.raises(RuntimeError):
        async with claim:
            proxy.set(Fault("reset", 1.0))  # the release never reaches Redis
            raise RuntimeError("the run failed")
    proxy.set(Fault("pass"))
    again = await claim_when_free(conversations, user, body)  # not a 409 for the lease
    async with again:  # leaving it unfinished frees it again
        assert again.replay is None  # the failed run stored no reply: the retry runs


class AppliedAfterTimeout:
    """A store call that the caller's timeout gives up on, and that the store applies just after
    (a COMMIT on its way when the client stopped waiting). Later calls go straight through."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call
        self.sent = asyncio.Event()
        self.applied = asyncio.Event()
        self._late: asyncio.Task[None] | None = None

    async def __call__(self, *args: Any) -> Any:
        if self.sent.is_set():
            return await self.call(*args)
        self.sent.set()
        try:
            await asyncio.Event().wait()  # no reply: the timeout cuts this
        finally:
            self._late = asyncio.create_task(self._apply(args))

    async def _apply(self, args: tuple[Any, ...]) -> None:
        await asyncio.sleep(0.02)
        await self.call(*args)
        self.applied.set()


class ReplyHeldBack:
    """A store call that the store applies at once, and whose reply waits until the test lets it go:
    the moment a client that leaves cancels its request between the two."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call
        self.applied = asyncio.Event()
        self.let_go = asyncio.Event()

    async def __call__(self, *args: Any) -> Any:
        result = await self.call(*args)
        self.applied.set()
        await self.let_go.wait()
        return result


def hold_back(monkeypatch: pytest.MonkeyPatch, backend: Backend, method: str) -> ReplyHeldBack:
    """Hold back the replies of `backend.method`. Its wait gives the loop away mid-call, so the backend
    now says it suspends: SQLite's own calls never do, and no cancellation can cut them."""
    held = ReplyHeldBack(getattr(backend, method))
    monkeypatch.setattr(backend, method, held)
    monkeypatch.setattr(backend, "calls_suspend", True)
    return held


def counted(monkeypatch: pytest.MonkeyPatch, backend: Backend, method: str) -> list[tuple[Any, ...]]:
    """The calls made to `backend.method` from now on."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(backend, method)

    async def counting(*args: Any) -> Any:
        calls.append(args)
        return await real(*args)

    monkeypatch.setattr(backend, method, counting)
    return calls


async def frees_that_hang(monkeypatch: pytest.MonkeyPatch, backend: Backend, *, hanging: int) -> list[float]:
    """Make the first `hanging` frees of a lock (`close_turn` without items) hang; the times of every free."""
    close_turn, frees = backend.close_turn, []

    async def close_turn_hanging(key: str, token: str, items: list[Any] | None, trim_to: int | None) -> None:
        frees.append(time.monotonic())
        if len(frees) <= hanging:
            await asyncio.Event().wait()
        await close_turn(key, token, items, trim_to)

    monkeypatch.setattr(backend, "close_turn", close_turn_hanging)
    return frees


async def client_leaves(request: asyncio.Future[Any]) -> None:
    """Cancel `request` (the client left) and check that it ends at once, with the cancellation."""
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2.0):  # a hang guard: a store's reply may be held back until after this
            await request  # ends at once, not when the store answers


async def leave_mid_call(request: Awaitable[Any], held: ReplyHeldBack) -> None:
    """Run `request` until the store applied its call, cancel it (the client left), then let the reply go."""
    task = asyncio.ensure_future(request)
    await held.applied.wait()
    await client_leaves(task)
    held.let_go.set()


async def test_a_lock_take_cut_short_by_a_cancelled_request_does_not_lock_the_conversation_for_the_lease(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = conversations_on(backend)  # lease 30 s, lock wait 1 s
    user = f"u-{uuid.uuid4().hex[:8]}"
    await store_turn(conversations, user, [asked("hi"), answered("hello")])
    held = hold_back(monkeypatch, backend, "open_turn")
    await leave_mid_call(history(conversations, user), held)
    # The store took the lock for the request that left: its token is freed, not kept for the lease.
    assert plain(await history(conversations, user)) == [asked("hi"), answered("hello")]  # not a 409
    await conversations.drain()


async def test_a_sqlite_take_and_claim_run_whole_on_the_loop_where_no_cancellation_can_cut_them(tmp_path) -> None:
    backend = make_backend(f"sqlite:///{tmp_path / 'sessions.sqlite3'}", ttl=3600, timeout=2.0)
    await backend.start()
    try:
        conversations, key = conversations_on(backend), conversation_key("u-1", "s-1")
        record = IdempotencyRecord("t-1", "f")
        takes = [
            conversations.take(
                "open",
                lambda: backend.open_turn(key, "t-1", 30.0),
                holds=lambda raw: raw is not None,
                free_operation="close",
                free=lambda: backend.close_turn(key, "t-1", None, None),
            ),
            conversations.take(
                "idempotency_claim",
                lambda: backend.claim("k-1", record, 30.0),
                holds=lambda live: live is None,
                free_operation="idempotency_release",
                free=lambda: backend.release("k-1", "t-1"),
            ),
        ]
        try:
            for take, taken in zip(takes, [[], None], strict=True):
                with pytest.raises(StopIteration) as done:
                    take.send(None)  # one step: it never gave the loop away, so no cancellation could land
                assert done.value.value == taken
        finally:
            for take in takes:
                take.close()
    finally:
        await backend.close()


async def test_a_request_cut_while_it_waits_for_a_busy_conversation_leaves_the_holders_lock_alone(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = conversations_on(backend)
    user = f"u-{uuid.uuid4().hex[:8]}"
    key = conversation_key(user, "s-1")
    assert await backend.open_turn(key, "another-run", 30.0) == []  # another run holds the conversation
    frees = counted(monkeypatch, backend, "close_turn")
    held = hold_back(monkeypatch, backend, "open_turn")
    await leave_mid_call(history(conversations, user), held)  # cut while its take found the conversation held
    await conversations.drain()
    assert frees == []  # it held nothing, so it sent nothing to free
    assert await backend.open_turn(key, "a-third-run", 30.0) is None  # the other run still holds it


async def test_a_lock_take_that_timed_out_and_was_applied_late_does_not_lock_the_conversation_for_the_lease(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = conversations_on(backend, timeout=0.2)
    user = f"u-{uuid.uuid4().hex[:8]}"
    await store_turn(conversations, user, [asked("hi"), answered("hello")])
    late = AppliedAfterTimeout(backend.open_turn)
    monkeypatch.setattr(backend, "open_turn", late)
    monkeypatch.setattr(backend, "calls_suspend", True)
    request = asyncio.ensure_future(history(conversations, user))
    await late.sent.wait()
    await client_leaves(request)  # the take goes on, times out, and reaches the store after that
    await late.applied.wait()
    assert plain(await history(conversations, user)) == [asked("hi"), answered("hello")]  # not a 409
    await conversations.drain()


async def test_shutdown_waits_for_a_cut_take_to_be_freed_through_its_slowest_retries(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = make_backend(f"sqlite:///{tmp_path / 'sessions.sqlite3'}", ttl=3600, timeout=2.0)
    await backend.start()
    try:
        # Short pauses, so that the store timeout's share of the worst case is what matters.
        monkeypatch.setattr(_conversations, "CLOSE_RETRIES", (0.01, 0.01, 0.01))
        monkeypatch.setattr(_conversations, "FREE_RETRIES", (0.0, 0.01, 0.01, 0.01))
        conversations = conversations_on(backend, timeout=0.5)
        user = f"u-{uuid.uuid4().hex[:8]}"
        key = conversation_key(user, "s-1")
        held = hold_back(monkeypatch, backend, "open_turn")
        frees = await frees_that_hang(monkeypatch, backend, hanging=3)  # each cut by the 0.5 s timeout
        request = asyncio.ensure_future(history(conversations, user))
        await held.applied.wait()
        await client_leaves(request)
        # The take's reply, within its timeout by 0.25 s: a loop late by that much (a busy machine) would
        # let the timeout win and the test fail for the wrong reason.
        asyncio.get_running_loop().call_later(0.25, held.let_go.set)
        await conversations.drain()  # the shutdown
        assert len(frees) == 4  # three cut by the timeout, the fourth went through
        assert await backend.open_turn(key, "the-next-run", 30.0) == []  # free, not held for the lease
    finally:
        await backend.close()


async def test_a_key_claim_cut_short_by_a_cancelled_request_does_not_hold_the_key_for_the_lease(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = conversations_on(backend)
    user, body = f"u-{uuid.uuid4().hex[:8]}", {"text": "book it"}
    held = hold_back(monkeypatch, backend, "claim")
    await leave_mid_call(idempotency.begin(conversations, user, "order-7", body), held)
    retried = await claim_when_free(conversations, user, body)  # 409 for at most a second, not the 30 s lease
    assert retried.replay is None  # the request that left stored no reply: the retry runs
    async with retried:
        await retried.finish("booked")
    assert (await idempotency.begin(conversations, user, "order-7", body)).replay == "booked"
    await conversations.drain()


async def test_a_request_cut_while_another_request_holds_its_key_leaves_that_key_alone(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = conversations_on(backend)
    user, body = f"u-{uuid.uuid4().hex[:8]}", {"text": "book it"}
    store_key = idempotency_key(user, "order-7")
    assert await backend.claim(store_key, IdempotencyRecord("another-request", fingerprint(body)), 30.0) is None
    releases = counted(monkeypatch, backend, "release")
    held = hold_back(monkeypatch, backend, "claim")
    await leave_mid_call(idempotency.begin(conversations, user, "order-7", body), held)
    await conversations.drain()
    assert releases == []  # it held nothing, so it sent nothing to release
    with pytest.raises(KeyInFlight):  # the other request still holds the key
        await idempotency.begin(conversations, user, "order-7", body)


async def test_a_reply_whose_store_failed_is_stored_in_the_background_and_the_retry_gets_it(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = conversations_on(backend)
    user, body = f"u-{uuid.uuid4().hex[:8]}", {"text": "book it"}
    finish, failed = backend.finish, []

    async def finish_failing_once(*args: Any) -> None:
        if not failed:
            failed.append(args)
            raise ConnectionError("the store could not be reached")
        await finish(*args)

    monkeypatch.setattr(backend, "finish", finish_failing_once)
    claim = await idempotency.begin(conversations, user, "order-7", body)
    async with claim:
        await claim.finish("booked")  # counted, not raised: the reply still went out
    retried = await claim_when_free(conversations, user, body)  # not a 409 for the lease
    assert failed and retried.replay == "booked"  # the stored reply, not a second run of the model
    await conversations.drain()


@pytest.mark.redis
async def test_a_reply_whose_store_was_reset_is_stored_in_the_background_on_redis(redis_behind_proxy) -> None:
    proxy, conversations = redis_behind_proxy
    user, body = f"u-{uuid.uuid4().hex[:8]}", {"text": "book it"}
    async with await idempotency.begin(conversations, user, "order-7", body) as claim:
        proxy.set(Fault("reset", 1.0))  # the finish never reaches Redis
        await claim.finish("booked")
    proxy.set(Fault("pass"))
    retried = await claim_when_free(conversations, user, body)
    assert retried.replay == "booked"


@pytest.mark.redis
async def test_a_lock_take_cut_short_while_its_reply_is_late_does_not_lock_the_conversation_on_redis(
    redis_behind_proxy,
) -> None:
    proxy, conversations = redis_behind_proxy
    user = f"u-{uuid.uuid4().hex[:8]}"
    await store_turn(conversations, user, [asked("hi"), answered("hello")])
    proxy.set(Fault("latency", 0.2))  # Redis takes the lock at once; its reply comes 0.2 s later
    request = asyncio.create_task(history(conversations, user))
    await asyncio.sleep(0.05)  # the take is on its way (under the 0.3 s socket timeout either way)
    await client_leaves(request)
    proxy.set(Fault("pass"))
    assert plain(await history(conversations, user)) == [asked("hi"), answered("hello")]  # not a 409


async def test_a_tool_using_turn_longer_than_max_items_is_remembered_through_the_api(tmp_path, analytics_transport, store_url):
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with running_chat(tmp_path, analytics_transport, sessions_url=store_url, session_max_items=MAX_ITEMS) as chat:
        # The offline model calls both tools: user, 2 calls, 2 outputs and the reply are 6 items.
        first = await chat.post("/chat/", json=say(user, "What time is it, and my stats?"))
        turns = await chat.get("/sessions/s-1", params={"user_id": user})
        second = await chat.post("/chat/", json=say(user, "thanks"))
    assert "The current time is" in first.json()["reply"] and "Analytics says" in first.json()["reply"]
    assert turns.status_code == 200
    assert [t["text"] for t in turns.json()["turns"]] == ["What time is it, and my stats?"]
    assert "message 2 of this conversation" in second.json()["reply"]


async def test_shutdown_waits_for_a_turns_store_whose_request_left_while_it_ran(backend, monkeypatch: pytest.MonkeyPatch):
    # The client leaves while its turn is being stored: the store call goes on (it must not be
    # lost), and the shutdown that follows waits for it before the store closes.
    conversations, user = conversations_on(backend), f"u-{uuid.uuid4().hex[:8]}"
    held = hold_back(monkeypatch, backend, "close_turn")
    request = asyncio.ensure_future(store_turn(conversations, user, [asked("hi"), answered("hello")]))
    await held.applied.wait()
    await client_leaves(request)
    asyncio.get_running_loop().call_later(0.1, held.let_go.set)
    await conversations.drain()  # the shutdown
    assert held.let_go.is_set(), "the shutdown waited for the store call"
    monkeypatch.undo()
    assert plain(await history(conversations, user)) == [asked("hi"), answered("hello")]


async def test_shutdown_lets_the_work_it_gives_up_on_unwind_before_the_store_closes(backend, monkeypatch: pytest.MonkeyPatch):
    # A store call still running when the shutdown's budget is spent is cancelled, and the
    # shutdown waits for it to unwind: the store is closed right after `drain`.
    conversations = conversations_on(backend)
    monkeypatch.setattr(conversations, "drain_budget", lambda: 0.05)
    unwound = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a store call's clean-up awaits too
            unwound.set()

    request = asyncio.ensure_future(conversations.settle("close", hangs, frees_only=False))
    await asyncio.sleep(0.01)
    await client_leaves(request)  # the store call goes on
    await conversations.drain()
    assert unwound.is_set()
