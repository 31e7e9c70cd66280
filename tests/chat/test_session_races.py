"""Races for one conversation or one idempotency key, on every store: one winner, and the rest see it.

Replicas share PostgreSQL or Redis, so two requests for the same conversation or the same key can
reach the store at the same moment from different connections. Seeded random rounds race 2-5
takes or claims at once (`asyncio.gather`) on a few keys, then let the winner, a loser or nobody
close, finish or release, and compare every answer with a model of what the store must hold.
Leases are long here: expiry has its own tests (test_session_turns.py).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.exceptions import ResponseError

from chat_service.sessions import Conversations
from chat_service.sessions._backend import Backend, IdempotencyRecord
from chat_service.sessions._guarded import Guarded
from chat_service.sessions._keys import holder_token

ROUNDS = 40
LEASE = 600.0


def _conversations(backend: Backend) -> Conversations:
    guarded = Guarded(timeout=5.0, on_failure=lambda operation, reason: None, emit=lambda event: None)
    return Conversations(backend, guarded, max_items=100, lock_wait=1.0, lease=30.0, idempotency_ttl=60)


def _rounds(kind: str, state: type[Any]) -> tuple[random.Random, dict[str, Any]]:
    """A seeded random source, and the model's state of three keys of `kind` new to the store."""
    prefix = uuid.uuid4().hex[:8]
    return random.Random(25), {f"{prefix}:{kind}{n}": state() for n in range(3)}


@dataclass
class Conversation:
    holder: str | None = None
    items: list[Any] = field(default_factory=list)


async def test_racing_takes_of_one_conversation_let_exactly_one_run(backend: Backend) -> None:
    rng, model = _rounds("c", Conversation)
    for round_ in range(ROUNDS):
        key = rng.choice(list(model))
        conversation = model[key]
        tokens = [holder_token() for _ in range(rng.randint(2, 5))]
        taken = await asyncio.gather(*(backend.open_turn(key, token, LEASE) for token in tokens))
        winners = [token for token, history in zip(tokens, taken, strict=True) if history is not None]
        if conversation.holder is None:
            assert len(winners) == 1, f"round {round_}: {len(winners)} runs took one free conversation"
            conversation.holder = winners[0]
            assert taken[tokens.index(winners[0])] == conversation.items  # the whole history, in order
        else:
            assert winners == [], f"round {round_}: a held conversation was taken"
        # A loser's close must change nothing; then the holder closes its turn, or keeps running.
        loser = next((token for token in tokens if token != conversation.holder), None)
        if loser is not None and rng.random() < 0.5:
            await backend.close_turn(key, loser, [{"role": "user", "content": f"lost {round_}"}], None)
        if rng.random() < 0.7:
            turn = [{"role": "user", "content": f"q{round_}"}, {"role": "assistant", "content": f"a{round_}"}]
            await backend.close_turn(key, conversation.holder, list(turn), None)
            conversation.items += turn
            conversation.holder = None
    for key, conversation in model.items():  # what every conversation holds at the end
        reader = holder_token()
        history = await backend.open_turn(key, reader, LEASE)
        assert (history is None) == (conversation.holder is not None)
        if history is not None:
            assert history == conversation.items
            await backend.close_turn(key, reader, None, None)


@dataclass
class Key:
    record: IdempotencyRecord | None = None


async def test_racing_claims_of_one_key_let_exactly_one_run_and_the_rest_see_it(backend: Backend) -> None:
    rng, model = _rounds("k", Key)
    for round_ in range(ROUNDS):
        key = rng.choice(list(model))
        state = model[key]
        mine = [IdempotencyRecord(holder_token(), rng.choice(["body-a", "body-b"])) for _ in range(rng.randint(2, 5))]
        seen = await asyncio.gather(*(backend.claim(key, record, LEASE) for record in mine))
        winners = [record for record, live in zip(mine, seen, strict=True) if live is None]
        if state.record is None:
            assert len(winners) == 1, f"round {round_}: {len(winners)} requests claimed one free key"
            state.record = winners[0]
        else:
            assert winners == [], f"round {round_}: a live key was claimed again"
        others = [live for record, live in zip(mine, seen, strict=True) if record is not state.record]
        assert all(live == state.record for live in others), f"round {round_}: a loser saw {others} not {state.record}"
        # A loser may try to finish or release: nothing changes. Then the holder finishes, fails
        # (releases) or is still running.
        loser = next((record for record in mine if record is not state.record), None)
        if loser is not None and rng.random() < 0.5:
            if rng.random() < 0.5:
                await backend.finish(key, loser.token, f"stolen {round_}", LEASE)
            else:
                await backend.release(key, loser.token)
        if state.record.reply is None:
            action = rng.random()
            if action < 0.4:
                reply = f'{{"reply": "r{round_}"}}'
                await backend.finish(key, state.record.token, reply, LEASE)
                state.record = IdempotencyRecord(state.record.token, state.record.fingerprint, reply)
            elif action < 0.7:
                await backend.release(key, state.record.token)
                state.record = None
        elif rng.random() < 0.2:  # a finished key's reply is forgotten only by its own holder
            await backend.release(key, state.record.token)
            state.record = None


async def test_a_close_applied_whose_reply_was_lost_is_stored_once(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store applied the close, its reply was lost (a timeout, a reset), and
    `Conversations.settle` retries it in the background: the turn is stored once, not twice.

    On SQLite and PostgreSQL the close is one transaction, so this is a commit whose reply was
    lost. (The old composed close passed this too: by then it had emptied its items in process.
    Its gap was a lost reply inside `add_items`, which the proxy cannot target.)"""
    close_turn, lost = backend.close_turn, []

    async def close_applied_then_reply_lost(*args: Any) -> None:
        await close_turn(*args)
        if not lost:
            lost.append(args)
            raise ConnectionError("the close's reply was lost")

    monkeypatch.setattr(backend, "close_turn", close_applied_then_reply_lost)
    conversations = _conversations(backend)
    user, turn = f"u-{uuid.uuid4().hex[:8]}", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    async with conversations.turn(user, "s-1") as taken:
        await taken.complete(list(turn))  # counted, not raised: the reply still goes out
    await conversations.drain()  # the background retry of the close has run
    async with conversations.turn(user, "s-1") as again:  # not locked for the lease either
        stored = [{k: v for k, v in item.items() if k != "_turn_at"} for item in again.history]
    assert lost and stored == turn


@pytest.mark.redis
async def test_a_redis_close_whose_store_was_applied_but_its_reply_lost_stores_the_turn_once(redis_backend, monkeypatch) -> None:
    """Redis closes in steps: the store (and its mark on the lock), the trim, the unlock. The store
    is applied and its reply lost: the retry finds the mark, stores nothing again and unlocks."""
    backend = redis_backend
    store_turn, lost = backend._store_turn, []  # type: ignore[attr-defined]

    async def applied_then_reply_lost(**kwargs: Any) -> Any:
        answer = await store_turn(**kwargs)
        if not lost:
            lost.append(answer)
            raise ConnectionError("the store's reply was lost")
        return answer

    monkeypatch.setattr(backend, "_store_turn", applied_then_reply_lost)
    conversations = _conversations(backend)
    user = f"u-{uuid.uuid4().hex[:8]}"
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    async with conversations.turn(user, "s-1") as taken:
        await taken.complete(list(turn))
    await conversations.drain()
    async with conversations.turn(user, "s-1") as again:  # unlocked by the retry, not by the lease
        stored = [{k: v for k, v in item.items() if k != "_turn_at"} for item in again.history]
    assert lost == [1] and stored == turn


@pytest.mark.redis
async def test_a_redis_trim_after_the_lease_passed_on_cuts_nothing_of_the_next_run(redis_backend, monkeypatch) -> None:
    """Redis counts a trim's cut from a read after the store, then cuts: if the lease passes to
    another run in between, and that run stores and trims its own turn, the late cut must not
    land on the shortened list (it would delete the next run's turn)."""
    backend = redis_backend
    key = f"u-{uuid.uuid4().hex[:8]}:s-1"

    def turn(n: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]

    first_kept, passed = backend._first_kept, []  # type: ignore[attr-defined]

    async def lease_passes_meanwhile(key_: str, keep: int) -> int:
        first = await first_kept(key_, keep)
        if not passed:  # the late run's read; the next run's own close reads as usual
            passed.append(first)
            await asyncio.sleep(0.4)  # the late run's lease runs out
            assert await backend.open_turn(key, "next", LEASE) is not None
            await backend.close_turn(key, "next", turn(4), 2)  # stores its turn and keeps only it
        return first

    for n in (1, 2):
        assert await backend.open_turn(key, f"run-{n}", LEASE) == [item for m in range(1, n) for item in turn(m)]
        await backend.close_turn(key, f"run-{n}", turn(n), None)
    assert await backend.open_turn(key, "late", 0.2) is not None
    monkeypatch.setattr(backend, "_first_kept", lease_passes_meanwhile)
    await backend.close_turn(key, "late", turn(3), 2)
    monkeypatch.undo()
    history = await backend.open_turn(key, "reader", LEASE)
    await backend.close_turn(key, "reader", None, None)
    assert passed == [4] and history == turn(4)  # the late cut, counted on its 6 items, was at 4


@pytest.mark.redis
async def test_a_redis_turn_on_keys_of_the_wrong_type_fails_before_it_writes_anything(redis_backend) -> None:
    """Redis runs a script's writes up to its first error and keeps them: each script checks (or
    reads) every key it writes before its first write, so a corrupted key space fails a take or a
    close without a lock left behind or a turn half-written."""
    backend = redis_backend
    key = f"u-{uuid.uuid4().hex[:8]}:s-1"
    lock, meta, messages = f"chat:lock:{key}", f"chat:session:{key}", f"chat:session:{key}:messages"
    redis = backend._redis  # type: ignore[attr-defined]
    try:
        await redis.set(messages, "not a list", ex=60)
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await backend.open_turn(key, "run", LEASE)
        assert await redis.exists(lock) == 0
        await redis.delete(messages)
        assert await backend.open_turn(key, "run", LEASE) == []
        await redis.set(messages, "not a list", ex=60)
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await backend.close_turn(key, "run", [{"role": "user", "content": "hi"}], None)
        assert await redis.exists(meta) == 0 and await redis.get(lock) == b"run"  # not marked stored
    finally:
        await redis.delete(lock, messages)
