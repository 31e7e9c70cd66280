"""A conversation's history: read it or forget it (only the user's own, with auth on)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from servicekit.openapi import responses
from servicekit.validation import UserId

from ..models import SessionHistory, SessionId, SessionTurn
from ..sessions import StoreUnavailable
from .auth import AUTH_DESCRIPTIONS, CallerDep, acting_user
from .deps import ConversationsDep


class _SharedPath(APIRoute):
    """GET and DELETE share the path: a 405 lists both in Allow (Starlette names only the first route's)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise HTTPException(405, "Method Not Allowed", headers={"Allow": "DELETE, GET"})
        await super().handle(scope, receive, send)


router = APIRouter(tags=["sessions"], route_class=_SharedPath)
_UNAVAILABLE = "The session store, or the identity provider's keys, cannot be reached; retry after Retry-After"
READ_ERRORS = responses(
    401, 403, 404, 422, 503, descriptions={**AUTH_DESCRIPTIONS, 404: "No such conversation for this user", 503: _UNAVAILABLE}
)
DELETE_ERRORS = responses(401, 403, 422, 503, descriptions={**AUTH_DESCRIPTIONS, 503: _UNAVAILABLE})

SessionPath = Annotated[SessionId, Path(description="The conversation's `metadata.session_id`")]
UserQuery = Annotated[UserId, Query(description="Whose conversation; the token's subject when auth is on")]


def _unavailable() -> HTTPException:
    return HTTPException(503, "The session store is unavailable", headers={"Retry-After": "1"})


@router.get("/sessions/{session_id}", response_model=SessionHistory, summary="Read a conversation", responses=READ_ERRORS)
async def get_session(
    session_id: SessionPath, user_id: UserQuery, caller: CallerDep, conversations: ConversationsDep
) -> SessionHistory:
    """Return the user's conversation, turn by turn with timestamps."""
    user = acting_user(caller, user_id)
    try:
        turns = await conversations.turns(user, session_id)
    except StoreUnavailable:
        raise _unavailable() from None
    if not turns:
        raise HTTPException(404, "No such conversation")
    return SessionHistory(
        user_id=user, session_id=session_id, turns=[SessionTurn(at=t.at, text=t.text, reply=t.reply) for t in turns]
    )


@router.delete("/sessions/{session_id}", status_code=204, summary="Forget a conversation", responses=DELETE_ERRORS)
async def delete_session(
    session_id: SessionPath, user_id: UserQuery, caller: CallerDep, conversations: ConversationsDep
) -> Response:
    """Forget the user's conversation (204 whether or not it existed)."""
    user = acting_user(caller, user_id)
    try:
        await conversations.forget(user, session_id)
    except StoreUnavailable:
        raise _unavailable() from None
    return Response(status_code=204)
