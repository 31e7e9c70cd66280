"""Token verification in process: every forged, stale or misaddressed token is refused with its reason."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_service.auth import MAX_TOKEN_CHARS, Authenticator, AuthError, InvalidToken, JwksKeys, MissingToken, SecretKey
from tests.fakes.identity import (
    AUDIENCE,
    ISSUER,
    SECRET,
    _b64,
    bearer,
    claims,
    ec_key,
    hmac_with_public_key,
    hs256,
    jwks,
    public_jwk,
    rsa_key,
    signed,
    unsigned,
)


def secret_authenticator(**overrides: object) -> Authenticator:
    options: dict[str, object] = {"algorithms": ["HS256"], "issuer": ISSUER, "audience": AUDIENCE, "leeway": 30.0}
    options.update(overrides)
    return Authenticator(SecretKey(SECRET.encode(), ["HS256"]), **options)  # type: ignore[arg-type]


async def jwks_authenticator(document: dict[str, object], algorithms: tuple[str, ...] = ("ES256", "RS256")) -> Authenticator:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=document)))
    keys = JwksKeys(client, "https://idp.test/jwks", algorithms=algorithms)
    assert await keys.refresh()
    return Authenticator(keys, algorithms=algorithms, issuer=ISSUER, audience=AUDIENCE)


async def refused(authenticator: Authenticator, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        await authenticator.authenticate(bearer(token)["Authorization"])
    assert token not in caught.value.detail
    return caught.value


async def test_a_valid_token_gives_its_subject():
    caller = await secret_authenticator().authenticate(f"Bearer {hs256(claims('alice'))}")
    assert caller.subject == "alice"
    assert caller.claims["aud"] == AUDIENCE
    assert "aud" not in repr(caller), "claims may hold personal data: keep them out of reprs and logs"


async def test_the_scheme_is_case_insensitive():
    assert (await secret_authenticator().authenticate(f"bearer {hs256(claims('bob'))}")).subject == "bob"


@pytest.mark.parametrize("header", [None, "", "Basic YWxpY2U6cHc=", "Token abc"])
async def test_no_bearer_token_is_missing(header):
    with pytest.raises(MissingToken):
        await secret_authenticator().authenticate(header)


@pytest.mark.parametrize("header", ["Bearer", "Bearer    "])
async def test_an_empty_bearer_token_is_malformed(header):
    with pytest.raises(InvalidToken, match="Malformed token"):
        await secret_authenticator().authenticate(header)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (hs256(claims(ttl=-120)), "expired"),
        (hs256(claims(nbf=9_999_999_999)), "not_yet_valid"),
        (hs256(claims(), secret="another-secret-0123456789abcdef0123456789"), "signature"),
        (unsigned(claims()), "algorithm"),
        (signed(claims(), rsa_key("a"), "a", "RS256"), "algorithm"),
        (hs256(claims(aud="someone-else")), "audience"),
        (hs256(claims(aud=None)), "missing_aud"),
        (hs256(claims(iss="https://evil.test")), "issuer"),
        (hs256(claims(iss=None)), "missing_iss"),
        (hs256(claims(sub=None)), "missing_sub"),
        (hs256(claims(exp=None)), "missing_exp"),
        (hs256(claims(sub="../bob")), "subject"),
        (hs256(claims(sub="x" * 65)), "subject"),
        (hs256(claims(sub="")), "subject"),
        (hs256(claims(sub=42)), "malformed"),
        ("garbage", "malformed"),
        ("a.b.c", "malformed"),
        ("x" * (MAX_TOKEN_CHARS + 1), "malformed"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None,
)
async def test_bad_tokens_are_refused_with_their_reason(token, reason):
    assert (await refused(secret_authenticator(), token)).reason == reason


async def test_clock_skew_within_the_leeway_is_accepted():
    authenticator = secret_authenticator(leeway=30.0)
    assert (await authenticator.authenticate(f"Bearer {hs256(claims(ttl=-10))}")).subject == "alice"
    assert (await refused(secret_authenticator(leeway=0.0), hs256(claims(ttl=-10)))).reason == "expired"


async def test_without_issuer_and_audience_configured_they_are_not_checked():
    authenticator = secret_authenticator(issuer=None, audience=None)
    token = hs256(claims(iss="https://anyone.test", aud="any-app"))
    assert (await authenticator.authenticate(f"Bearer {token}")).subject == "alice"


async def test_rs256_and_es256_tokens_verify_against_the_published_keys():
    authenticator = await jwks_authenticator(jwks(public_jwk(rsa_key("a"), "rsa-1"), public_jwk(ec_key("a"), "ec-1")))
    for token in (signed(claims("alice"), rsa_key("a"), "rsa-1", "RS256"), signed(claims("bob"), ec_key("a"), "ec-1", "ES256")):
        assert (await authenticator.authenticate(f"Bearer {token}")).subject in ("alice", "bob")


async def test_hs_rs_confusion_is_refused():
    """An attacker HMAC-signs with the public key; a library that picks the algorithm from the token would accept it."""
    authenticator = await jwks_authenticator(jwks(public_jwk(rsa_key("a"), "rsa-1")))
    forged = hmac_with_public_key(claims(), rsa_key("a"), "rsa-1")
    assert (await refused(authenticator, forged)).reason == "algorithm"
    # Even with HS256 allowed in the list, a published key never verifies an HMAC token.
    lenient = await jwks_authenticator(jwks(public_jwk(rsa_key("a"), "rsa-1")), algorithms=("HS256", "RS256"))
    assert (await refused(lenient, forged)).reason == "key_mismatch"


async def test_a_token_must_use_the_algorithm_its_key_is_for():
    authenticator = await jwks_authenticator(jwks(public_jwk(rsa_key("a"), "rsa-1"), public_jwk(ec_key("a"), "ec-1")))
    # Signed by the EC key but naming the RSA key's id.
    assert (await refused(authenticator, signed(claims(), ec_key("a"), "rsa-1", "ES256"))).reason == "key_mismatch"
    # Signed by another RSA key under a known kid: the signature does not verify.
    assert (await refused(authenticator, signed(claims(), rsa_key("b"), "rsa-1", "RS256"))).reason == "signature"


async def test_published_symmetric_and_encryption_keys_are_never_used():
    oct_key = {"kty": "oct", "k": _b64(SECRET.encode()), "kid": "oct-1"}
    authenticator = await jwks_authenticator(
        jwks(oct_key, public_jwk(rsa_key("b"), "enc-1", use="enc"), public_jwk(rsa_key("a"), "rsa-1")),
        algorithms=("HS256", "RS256"),
    )
    assert (await refused(authenticator, hs256(claims(), kid="oct-1"))).reason == "unknown_key"
    assert (await refused(authenticator, signed(claims(), rsa_key("b"), "enc-1", "RS256"))).reason == "unknown_key"


def _token_parts() -> st.SearchStrategy[str]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
    header = st.fixed_dictionaries(
        {"alg": st.sampled_from(["HS256", "RS256", "none", "ES256", ""])}, optional={"kid": json_values}
    )
    encoded = st.builds(
        lambda h, p: f"{_b64(json.dumps(h).encode())}.{_b64(json.dumps(p).encode())}.{_b64(b'sig')}", header, json_values
    )
    return encoded | st.text(max_size=300) | st.just("[" * 5000).map(lambda s: f"{_b64(s.encode())}.e30.")


@settings(max_examples=300, deadline=None)
@given(token=_token_parts())
async def test_any_garbage_is_refused_never_a_crash(token):
    with pytest.raises(AuthError):
        await secret_authenticator().authenticate(f"Bearer {token}")


class CountingKeys:
    """A key source that counts how often a signature had to be checked."""

    def __init__(self, inner: SecretKey | JwksKeys) -> None:
        self.inner = inner
        self.lookups = 0

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    @property
    def current(self) -> object:
        return self.inner.current

    async def key_for(self, kid: str | None, alg: str):
        self.lookups += 1
        return await self.inner.key_for(kid, alg)


async def test_a_verified_token_is_remembered_and_its_claims_are_read_only():
    keys = CountingKeys(SecretKey(SECRET.encode(), ["HS256"]))
    authenticator = Authenticator(keys, algorithms=["HS256"], issuer=ISSUER, audience=AUDIENCE)
    token = f"Bearer {hs256(claims('alice'))}"
    first, second = await authenticator.authenticate(token), await authenticator.authenticate(token)
    assert first is second and keys.lookups == 1
    with pytest.raises(TypeError):
        first.claims["sub"] = "bob"  # type: ignore[index]
    await authenticator.authenticate(f"Bearer {hs256(claims('alice', jti='another'))}")
    assert keys.lookups == 2, "another token is verified on its own"


async def test_a_remembered_token_still_expires():
    authenticator = Authenticator(SecretKey(SECRET.encode(), ["HS256"]), algorithms=["HS256"], leeway=0.0)
    token = f"Bearer {hs256(claims('alice', ttl=2, iss=None, aud=None))}"
    assert (await authenticator.authenticate(token)).subject == "alice"
    async with asyncio.timeout(5):
        while True:
            try:
                await authenticator.authenticate(token)
            except InvalidToken as refused:
                assert refused.reason == "expired"
                break
            await asyncio.sleep(0.05)


async def test_remembered_tokens_are_checked_again_when_the_keys_change():
    served = {"document": jwks(public_jwk(rsa_key("a"), "rsa-1"))}
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=served["document"])))
    jwks_keys = JwksKeys(client, "https://idp.test/jwks", algorithms=("RS256",), cooldown_seconds=0)
    await jwks_keys.refresh()
    keys = CountingKeys(jwks_keys)
    authenticator = Authenticator(keys, algorithms=["RS256"], issuer=ISSUER, audience=AUDIENCE)
    token = f"Bearer {signed(claims('alice'), rsa_key('a'), 'rsa-1', 'RS256')}"
    await authenticator.authenticate(token)
    await jwks_keys.refresh()  # the same keys again: what was verified stays verified
    await authenticator.authenticate(token)
    assert keys.lookups == 1
    served["document"] = jwks(public_jwk(rsa_key("b"), "rsa-2"))  # the provider withdrew rsa-1
    await jwks_keys.refresh()
    with pytest.raises(InvalidToken, match="Unknown signing key"):
        await authenticator.authenticate(token)


@pytest.mark.parametrize("size", [0, 2])
async def test_the_cache_holds_at_most_its_size(size):
    keys = CountingKeys(SecretKey(SECRET.encode(), ["HS256"]))
    authenticator = Authenticator(keys, algorithms=["HS256"], cache_size=size)
    tokens = [f"Bearer {hs256(claims(f'user{n}', iss=None, aud=None))}" for n in range(3)]
    for token in tokens:
        await authenticator.authenticate(token)
    await authenticator.authenticate(tokens[-1])
    assert keys.lookups == (4 if size == 0 else 3)
    await authenticator.authenticate(tokens[0])  # the oldest went first
    assert keys.lookups == (5 if size == 0 else 4)
