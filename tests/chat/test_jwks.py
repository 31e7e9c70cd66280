"""The JWKS key cache: refresh on unknown kids (rate-limited, one fetch in flight), served from cache when down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest

from chat_service.auth import InvalidToken, JwksKeys, KeysUnavailable
from tests.fakes.handlers import refuse
from tests.fakes.identity import ec_key, jwks, public_jwk, rsa_key

RSA_1 = public_jwk(rsa_key("a"), "rsa-1")
RSA_2 = public_jwk(rsa_key("b"), "rsa-2")
EC_1 = public_jwk(ec_key("a"), "ec-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Provider:
    """An identity provider behind `httpx.MockTransport`: what it serves can change, and it counts fetches."""

    def __init__(self, document: object) -> None:
        self.answer: Callable[[httpx.Request], httpx.Response] = lambda _: httpx.Response(200, json=document)
        self.fetches = 0
        self.gate: asyncio.Event | None = None  # when set, every answer waits for it

    def serve(self, document: object) -> None:
        self.answer = lambda _: httpx.Response(200, json=document)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(request)


def keys_for(provider: Provider, clock: Clock, outcomes: list[str] | None = None) -> JwksKeys:
    client = httpx.AsyncClient(transport=httpx.MockTransport(provider.handler))
    return JwksKeys(
        client,
        "https://idp.test/jwks",
        algorithms=("ES256", "RS256"),
        cooldown_seconds=10,
        clock=clock,
        on_fetch=None if outcomes is None else outcomes.append,
    )


async def test_cached_keys_serve_every_token_without_fetching_again():
    provider, clock = Provider(jwks(RSA_1, EC_1)), Clock()
    keys = keys_for(provider, clock)
    assert await keys.refresh() and keys.loaded
    for _ in range(100):
        assert (await keys.key_for("rsa-1", "RS256")).algorithm_name == "RS256"
        assert (await keys.key_for("ec-1", "ES256")).algorithm_name == "ES256"
    assert provider.fetches == 1


async def test_an_unknown_kid_refreshes_once_and_finds_the_rotated_key():
    provider, clock = Provider(jwks(RSA_1)), Clock()
    keys = keys_for(provider, clock)
    await keys.refresh()
    provider.serve(jwks(RSA_2))
    clock.now += 11
    assert (await keys.key_for("rsa-2", "RS256")).key_id == "rsa-2"
    assert provider.fetches == 2
    with pytest.raises(InvalidToken, match="Unknown signing key"):
        await keys.key_for("rsa-1", "RS256")  # withdrawn by the provider: no longer trusted


async def test_a_flood_of_made_up_kids_fetches_at_most_once_per_cooldown():
    provider, clock = Provider(jwks(RSA_1)), Clock()
    keys = keys_for(provider, clock)
    await keys.refresh()
    clock.now += 11
    for _ in range(500):
        with pytest.raises(InvalidToken) as refused:
            await keys.key_for(uuid.uuid4().hex, "RS256")
        assert refused.value.reason == "unknown_key"
    assert provider.fetches == 2
    clock.now += 10
    with pytest.raises(InvalidToken):
        await keys.key_for("made-up", "RS256")
    assert provider.fetches == 3


async def test_concurrent_requests_for_a_new_kid_share_one_fetch():
    provider, clock = Provider(jwks(RSA_1)), Clock()
    keys = keys_for(provider, clock)
    await keys.refresh()
    provider.serve(jwks(RSA_1, RSA_2))
    provider.gate = asyncio.Event()
    clock.now += 11
    waiting = [asyncio.create_task(keys.key_for("rsa-2", "RS256")) for _ in range(50)]
    await asyncio.sleep(0.01)
    provider.gate.set()
    found = await asyncio.gather(*waiting)
    assert {key.key_id for key in found} == {"rsa-2"}
    assert provider.fetches == 2


async def test_a_request_that_gives_up_does_not_cancel_the_fetch_others_wait_for():
    provider, clock = Provider(jwks(RSA_1)), Clock()
    keys = keys_for(provider, clock)
    provider.gate = asyncio.Event()
    impatient = asyncio.create_task(keys.key_for("rsa-1", "RS256"))
    patient = asyncio.create_task(keys.key_for("rsa-1", "RS256"))
    await asyncio.sleep(0.01)
    impatient.cancel()
    await asyncio.sleep(0.01)
    provider.gate.set()
    assert (await patient).key_id == "rsa-1"
    assert provider.fetches == 1


@pytest.mark.parametrize(
    "failure",
    [
        refuse,
        lambda _: httpx.Response(500),
        lambda _: httpx.Response(200, text="<html>maintenance</html>"),
        lambda _: httpx.Response(200, json={"keys": []}),
        lambda _: httpx.Response(200, json={"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]}),
        lambda _: httpx.Response(200, json=["not", "a", "set"]),
    ],
    ids=["down", "500", "not-json", "empty", "only-symmetric", "not-a-set"],
)
async def test_cached_keys_are_served_while_the_provider_is_down_or_broken(failure):
    provider, clock, outcomes = Provider(jwks(RSA_1)), Clock(), []
    keys = keys_for(provider, clock, outcomes)
    await keys.refresh()
    provider.answer = failure
    clock.now += 11
    assert not await keys.refresh()
    assert (await keys.key_for("rsa-1", "RS256")).key_id == "rsa-1"
    assert outcomes[0] == "ok" and outcomes[1] in ("unreachable", "status", "invalid")
    clock.now += 11
    with pytest.raises(InvalidToken, match="Unknown signing key"):
        await keys.key_for("rsa-9", "RS256")


async def test_before_any_key_arrives_requests_are_told_to_retry_then_succeed():
    provider, clock = Provider(jwks(RSA_1)), Clock()
    provider.answer = refuse
    keys = keys_for(provider, clock)
    assert not await keys.refresh()
    clock.now += 3
    with pytest.raises(KeysUnavailable) as unavailable:
        await keys.key_for("rsa-1", "RS256")
    assert unavailable.value.retry_after == pytest.approx(7)
    assert provider.fetches == 1, "within the cooldown, no new fetch"
    provider.serve(jwks(RSA_1))
    clock.now += 7
    assert (await keys.key_for("rsa-1", "RS256")).key_id == "rsa-1"


async def test_start_never_fails_and_the_refresher_retries_until_keys_arrive():
    provider = Provider(jwks(RSA_1))
    provider.answer = refuse
    client = httpx.AsyncClient(transport=httpx.MockTransport(provider.handler))
    keys = JwksKeys(client, "https://idp.test/jwks", algorithms=("RS256",), cooldown_seconds=0.01, refresh_seconds=0.01)
    await keys.start()
    assert not keys.loaded
    provider.serve(jwks(RSA_1))
    async with asyncio.timeout(5):
        while not keys.loaded:
            await asyncio.sleep(0.01)
    await keys.aclose()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("jwks-") and not t.done()]


async def test_a_key_declaring_its_algorithm_verifies_only_that_one():
    provider, clock = Provider(jwks({**RSA_1, "alg": "RS256"})), Clock()
    client = httpx.AsyncClient(transport=httpx.MockTransport(provider.handler))
    keys = JwksKeys(client, "https://idp.test/jwks", algorithms=("PS256", "RS256"), clock=clock)
    await keys.refresh()
    assert (await keys.key_for("rsa-1", "RS256")).algorithm_name == "RS256"
    with pytest.raises(InvalidToken) as refused:
        await keys.key_for("rsa-1", "PS256")
    assert refused.value.reason == "key_mismatch"


async def test_a_token_without_kid_uses_the_only_key():
    provider, clock = Provider(jwks(RSA_1)), Clock()
    keys = keys_for(provider, clock)
    await keys.refresh()
    assert (await keys.key_for(None, "RS256")).key_id == "rsa-1"
    provider.serve(jwks(RSA_1, RSA_2))
    clock.now += 11
    await keys.refresh()
    with pytest.raises(InvalidToken, match="Unknown signing key"):
        await keys.key_for(None, "RS256")  # two keys: which one is not for us to guess
