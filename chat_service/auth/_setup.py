"""Building the configured authenticator in the lifespan."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import httpx

from servicekit.logging import get_logger

from ._authenticator import Authenticator, KeySource, SecretKey
from ._jwks import FetchHook, JwksKeys

if TYPE_CHECKING:
    from ..core.config import Settings


async def open_authenticator(
    settings: Settings,
    resources: AsyncExitStack,
    *,
    on_fetch: FetchHook | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Authenticator | None:
    """The authenticator the settings ask for, or None when auth is off.

    With a JWKS URL: one pooled client (closed with `resources`), a first fetch that never fails
    start-up (requests answer 503 until keys arrive, see `JwksKeys`), and the background refresher.
    """
    algorithms = settings.auth_algorithms or []
    keys: KeySource
    if settings.auth_jwt_secret is not None:
        keys = SecretKey(settings.auth_jwt_secret.get_secret_value().encode(), algorithms)
    elif settings.auth_jwks_url is not None:
        client = await resources.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(settings.auth_jwks_timeout),
                limits=httpx.Limits(max_connections=2, keepalive_expiry=30),
                headers={"Accept": "application/json"},
                transport=transport,
            )
        )
        jwks = JwksKeys(
            client,
            settings.auth_jwks_url,
            algorithms=algorithms,
            refresh_seconds=settings.auth_jwks_refresh_seconds,
            cooldown_seconds=settings.auth_jwks_cooldown_seconds,
            on_fetch=on_fetch,
        )
        resources.push_async_callback(jwks.aclose)
        await jwks.start()
        keys = jwks
    else:
        return None
    log = get_logger("auth")
    if settings.auth_issuer is None or settings.auth_audience is None:
        # Unset means unchecked: any token the key verifies is accepted, whoever it was issued for.
        log.warning(
            "auth_claims_unchecked",
            issuer_checked=settings.auth_issuer is not None,
            audience_checked=settings.auth_audience is not None,
        )
    log.info("auth_enabled", mode="secret" if settings.auth_jwt_secret is not None else "jwks", algorithms=algorithms)
    return Authenticator(
        keys,
        algorithms=algorithms,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        leeway=settings.auth_leeway,
        cache_size=settings.auth_cache_size,
    )
