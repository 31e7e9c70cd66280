"""Input types both services validate the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, SecretStr, StringConstraints

# 1 to 64 of [A-Za-z0-9_.@-], but never "." or "..", which a path would resolve. Written without
# look-ahead (pydantic's regex engine has none), so the OpenAPI schema states the whole rule.
USER_ID_PATTERN = (
    r"^(?:[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,63}"
    r"|\.[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,62}"
    r"|\.\.[A-Za-z0-9_.@-]{1,62})$"
)

UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]


def _empty_is_unset(value: object) -> object:
    # Compose and Kubernetes pass unset variables as "": that must not mean "set to nothing".
    return None if value == "" else value


OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_is_unset)]
OptionalText = Annotated[str | None, BeforeValidator(_empty_is_unset)]
