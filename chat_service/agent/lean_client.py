"""`AsyncOpenAI` whose chat-completions call skips the SDK's request "transform" when it is a no-op.

Every `chat.completions.create()` first runs its arguments through `async_maybe_transform`,
which walks the body against the `CompletionCreateParams` TypedDicts (every message against
each of the six message types, every tool schema key by key) to rename aliased keys and
format dates or files. The chat-completions params have no aliased key and no formatted
field (`tests/chat/test_lean_client.py` walks the types to prove it), so for a body that is
already plain JSON (the Agents SDK hands over `_to_dump_compatible` dicts and lists) the walk
returns what it was given, at ~250-350 us of CPU a call, measured: more than the HTTP exchange.

The shim: when the body is plain JSON, post it as is; otherwise (a pydantic model, an
iterator, a date...) call the SDK's own `create`. Everything else (headers, auth, timeouts,
the response's parsing and strict validation, streams) is the SDK's `_post`, unchanged.

Version-guarded: it is used only on the openai versions it was checked against
(`CHECKED_VERSIONS`); on any other, `lean_client_class()` returns the stock `AsyncOpenAI`, and
the test that pins the installed version fails, so an upgrade re-runs the checks (the type
walk, and a request-by-request comparison with the stock client). Upstream: the transform is
`openai/_utils/_transform.py` (generated code, the same in Anthropic's SDK, where the same
finding is https://github.com/anthropics/anthropic-sdk-python/issues/1195: the walk
produces zero changes for the Messages API's types).
"""

from __future__ import annotations

import inspect
from functools import cached_property
from typing import Any

import openai
from openai import AsyncStream
from openai._base_client import make_request_options
from openai.resources.chat import AsyncChat
from openai.resources.chat.completions import AsyncCompletions
from openai.resources.chat.completions.completions import validate_response_format
from openai.types.chat import ChatCompletion, ChatCompletionChunk

CHECKED_VERSIONS = ("3.57.",)

# create()'s keyword arguments that are request options, not body fields
_OPTIONS = ("extra_headers", "extra_query", "extra_body", "timeout")
# Every name create() takes: anything else goes to the stock create, which refuses it (TypeError)
# instead of sending it to the provider as a body field.
_KNOWN = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self"}
_SCALARS = (str, int, float, bool, type(None))


def plain_json(value: object) -> bool:
    """Only dicts with string keys, lists, strings, numbers, booleans and None: what the transform leaves alone."""
    if isinstance(value, _SCALARS):
        return True
    if type(value) is dict:
        return all(type(key) is str and plain_json(item) for key, item in value.items())
    if type(value) is list:
        return all(plain_json(item) for item in value)
    return False


class LeanCompletions(AsyncCompletions):
    """`create` posts a plain-JSON body without the transform; anything else goes the SDK's way."""

    async def create(self, **params: Any) -> Any:
        options = {name: params.pop(name) for name in _OPTIONS if name in params}
        body = {key: value for key, value in params.items() if not isinstance(value, (openai.NotGiven, openai.Omit))}
        if "messages" not in body or "model" not in body or not params.keys() <= _KNOWN or not plain_json(body):
            return await super().create(**params, **options)
        validate_response_format(params.get("response_format", openai.omit))
        stream = body.get("stream")
        return await self._post(
            "/chat/completions",
            body=body,
            options=make_request_options(
                extra_headers=options.get("extra_headers"),
                extra_query=options.get("extra_query"),
                extra_body=options.get("extra_body"),
                timeout=options.get("timeout", openai.NOT_GIVEN),
                security={"bearer_auth": True},
            ),
            cast_to=ChatCompletion,
            stream=stream or False,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )


class LeanChat(AsyncChat):
    @cached_property
    def completions(self) -> AsyncCompletions:
        return LeanCompletions(self._client)


class LeanAsyncOpenAI(openai.AsyncOpenAI):
    """`AsyncOpenAI`, but `chat.completions.create` skips the no-op transform (see the module's doc)."""

    @cached_property
    def chat(self) -> AsyncChat:
        return LeanChat(self)

    @property
    def user_agent(self) -> str:
        # The SDK names the client's class here: providers see the stock client's name.
        return f"AsyncOpenAI/Python {self._version}"


def lean_client_class() -> type[openai.AsyncOpenAI]:
    """`LeanAsyncOpenAI` on a checked openai version, the stock client on any other."""
    return LeanAsyncOpenAI if openai.__version__.startswith(CHECKED_VERSIONS) else openai.AsyncOpenAI
