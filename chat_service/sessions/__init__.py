"""Conversations that remember (Agents SDK sessions), one run at a time each, and idempotent chats.

async with conversations.turn(user_id, session_id) as turn:     # 409 Busy after CHAT_SESSION_LOCK_WAIT
    result = run(turn.history + [user_item])
    await turn.complete(new_items)                              # stored only when the run completed

claim = await idempotency.begin(conversations, user_id, key, body)   # 409 in flight, 422 other body
if claim.replay: return claim.replay
async with claim: ...; await claim.finish(reply_json)          # leaving without finish frees the key
"""

from . import _idempotency as idempotency
from ._conversations import Busy, Conversations, Turn, TurnView
from ._guarded import StoreUnavailable
from ._idempotency import Claim, KeyInFlight, KeyReused
from ._open import open_conversations, user_item

__all__ = [
    "Busy",
    "Claim",
    "Conversations",
    "KeyInFlight",
    "KeyReused",
    "StoreUnavailable",
    "Turn",
    "TurnView",
    "idempotency",
    "open_conversations",
    "user_item",
]
