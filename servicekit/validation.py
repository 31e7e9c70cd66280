"""Input types both services validate the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

# 1 to 64 of [A-Za-z0-9_.@-], but never "." or "..", which a path would resolve. Written without
# look-ahead (pydantic's regex engine has none), so the OpenAPI schema states the whole rule.
USER_ID_PATTERN = (
    r"^(?:[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,63}"
    r"|\.[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,62}"
    r"|\.\.[A-Za-z0-9_.@-]{1,62})$"
)

UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
