"""Input types both services validate the same way."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BeforeValidator,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

# 1 to 64 of [A-Za-z0-9_.@-], but never "." or "..", which a path would resolve. Written without
# look-ahead (pydantic's regex engine has none), so the OpenAPI schema states the whole rule.
USER_ID_PATTERN = (
    r"^(?:[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,63}"
    r"|\.[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,62}"
    r"|\.\.[A-Za-z0-9_.@-]{1,62})$"
)
USER_ID_RULE = "1-64 of letters, digits, _ . @ -, and not . or .."


def _user_id_in_words(value: object, handler: ValidatorFunctionWrapHandler) -> str:
    # The pattern is for machines (the schema publishes it); a person reads the rule in words.
    try:
        return str(handler(value))
    except ValidationError as error:
        if any(e["type"] == "string_pattern_mismatch" for e in error.errors()):
            raise PydanticCustomError("string_pattern_mismatch", f"A user id is {USER_ID_RULE}") from None
        raise


UserId = Annotated[
    str,
    StringConstraints(pattern=USER_ID_PATTERN),
    WrapValidator(_user_id_in_words),
    Field(description=f"A user id: {USER_ID_RULE}", examples=["alice"]),
]

# A date, a "T" (or a space), then hours and minutes: what every ISO 8601 date-time starts with.
_ISO_8601_START = re.compile(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d")


def _iso_8601_only(value: object) -> object:
    # pydantic alone reads 0, 1.5 and "1700000000" as Unix times: the schema promises ISO 8601 only.
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_8601_START.match(value)):
        return value
    raise PydanticCustomError("datetime_iso8601", "Input should be an ISO 8601 date-time string, like 2025-04-06T12:00:00Z")


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_8601_only)]
AwareIsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_8601_only)]


def empty_is_unset(value: object) -> object:
    """Compose and Kubernetes pass unset variables as "": that must mean "unset", not "set to nothing"."""
    return None if value == "" else value


OptionalSecret = Annotated[SecretStr | None, BeforeValidator(empty_is_unset)]
OptionalText = Annotated[str | None, BeforeValidator(empty_is_unset)]

# An opaque key a client or a service makes up: a session id, a message id, an idempotency key.
KEY_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
