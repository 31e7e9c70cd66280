"""The lean client sends exactly what the stock openai client sends, minus the no-op transform.

These tests fail when the SDK changes under the shim: a new aliased or formatted field in the
chat-completions params, a different request from `create`, or an unchecked openai version.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, get_args, get_type_hints

import httpx2
import openai
import pydantic
import pytest
from agents import ModelSettings, ModelTracing, OpenAIChatCompletionsModel, function_tool
from openai._utils._transform import PropertyInfo
from openai.types.chat import ChatCompletion, completion_create_params
from typing_extensions import is_typeddict

from chat_service.agent.lean_client import LeanAsyncOpenAI, LeanCompletions, lean_client_class, plain_json
from chat_service.agent.tools import get_current_time, get_user_analytics

COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
CHUNKS = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}\n\n'
    b"data: [DONE]\n\n"
)
TOOLS = [
    {
        "type": "function",
        "function": {"name": "t", "description": "d", "parameters": {"type": "object", "properties": {}}, "strict": True},
    }
]


def _aliased_or_formatted(tp: Any, seen: set[int], path: str) -> Iterator[str]:
    if id(tp) in seen:
        return
    seen.add(id(tp))
    for meta in getattr(tp, "__metadata__", ()):
        if isinstance(meta, PropertyInfo) and (meta.alias or meta.format):
            yield path
    if is_typeddict(tp):
        for key, hint in get_type_hints(tp, include_extras=True).items():
            yield from _aliased_or_formatted(hint, seen, f"{path}.{key}")
        return
    for arg in get_args(tp):
        yield from _aliased_or_formatted(arg, seen, path)


PARAMS = (completion_create_params.CompletionCreateParamsNonStreaming, completion_create_params.CompletionCreateParamsStreaming)


@pytest.mark.parametrize("params", PARAMS)
def test_no_chat_completions_field_is_renamed_or_formatted_so_the_transform_is_a_no_op(params):
    seen: set[int] = set()
    assert list(_aliased_or_formatted(params, seen, "body")) == []
    assert len(seen) > 100  # the walk reached the messages' and tools' own types


def test_the_installed_openai_is_a_checked_version():
    # Fails on an upgrade: re-run this file's checks on the new version, then add it to CHECKED_VERSIONS.
    assert lean_client_class() is LeanAsyncOpenAI


def test_plain_json_is_what_json_can_hold_as_is():
    assert plain_json({"a": [1, 2.5, "x", None, True, {"b": []}]})
    assert not plain_json({"a": (1, 2)})
    assert not plain_json({1: "x"})
    assert not plain_json({"a": openai.omit})
    assert not plain_json([ModelSettings()])


class Recorder:
    """A transport that answers like a chat-completions server and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if json.loads(request.content).get("stream"):
            return httpx2.Response(200, content=CHUNKS, headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json=COMPLETION, headers={"x-request-id": "req-1"})

    def sent(self) -> list[tuple[str, str, dict[str, str], Any]]:
        return [(r.method, str(r.url), _headers(r), json.loads(r.content)) for r in self.requests]


def _headers(request: httpx2.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k not in ("x-stainless-read-timeout",)}


def _client(cls: type[openai.AsyncOpenAI], recorder: Recorder) -> openai.AsyncOpenAI:
    return cls(
        api_key="sk-test",
        base_url="http://model.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(recorder)),
        _strict_response_validation=True,
    )


CASES: list[dict[str, Any]] = [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "tools": TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "temperature": 0.5,
        "metadata": {"k": "v"},
        "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}},
        "store": openai.omit,
        "top_p": openai.omit,
        "extra_headers": {"X-Extra": "1"},
        "extra_query": {"q": "1"},
        "extra_body": {"custom": [1, 2]},
        "timeout": 7.0,
    },
    # not plain JSON: the SDK's own create() (and its transform) runs
    {"model": "m", "messages": ({"role": "user", "content": "hi"},), "tools": iter(TOOLS)},
]


@pytest.mark.parametrize("case", range(len(CASES)))
async def test_each_request_is_the_stock_clients_request(case):
    answers = []
    recorders = []
    for cls in (openai.AsyncOpenAI, LeanAsyncOpenAI):
        recorder = Recorder()
        client = _client(cls, recorder)
        kwargs = dict(CASES[case])
        if "tools" in kwargs and not isinstance(kwargs["tools"], list):
            kwargs["tools"] = iter(TOOLS)  # a fresh iterator for each client
        answers.append(await client.chat.completions.create(**kwargs))
        recorders.append(recorder)
        await client.close()
    stock, lean = answers
    assert isinstance(lean, ChatCompletion)
    assert lean == stock
    assert lean._request_id == "req-1"  # type: ignore[attr-defined]
    assert recorders[1].sent() == recorders[0].sent()
    assert recorders[0].sent()[0][0:2] == ("POST", "http://model.test/v1/chat/completions" + ("?q=1" if case == 1 else ""))


async def test_a_stream_is_the_stock_clients_stream():
    chunks = []
    recorders = []
    for cls in (openai.AsyncOpenAI, LeanAsyncOpenAI):
        recorder = Recorder()
        client = _client(cls, recorder)
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
        )
        assert isinstance(stream, openai.AsyncStream)
        chunks.append([chunk async for chunk in stream])
        recorders.append(recorder)
        await client.close()
    assert chunks[1] == chunks[0]
    assert chunks[1][0].choices[0].delta.content == "hi"
    assert recorders[1].sent() == recorders[0].sent()


class Answer(pydantic.BaseModel):
    text: str


async def test_a_pydantic_response_format_is_refused_as_by_the_sdk():
    client = _client(LeanAsyncOpenAI, Recorder())
    with pytest.raises(TypeError, match=r"must use `chat.completions.parse\(\)`"):
        await client.chat.completions.create(model="m", messages=[], response_format=Answer)  # type: ignore[arg-type]
    await client.close()


async def test_an_unknown_argument_is_refused_as_by_the_sdk_not_sent():
    recorder = Recorder()
    client = _client(LeanAsyncOpenAI, recorder)
    with pytest.raises(TypeError, match="temprature"):
        await client.chat.completions.create(model="m", messages=[], temprature=0.5)  # type: ignore[call-overload]
    assert not recorder.requests
    await client.close()


async def test_the_agents_sdk_model_sends_the_same_request_on_the_lean_client():
    """The way chat uses it: the Agents SDK's chat-completions model with our tools."""
    tools = [function_tool(get_current_time), function_tool(get_user_analytics)]
    sent = []
    for cls in (openai.AsyncOpenAI, LeanAsyncOpenAI):
        recorder = Recorder()
        client = _client(cls, recorder)
        model = OpenAIChatCompletionsModel(model="m", openai_client=client)
        response = await model.get_response(
            "be kind", "hello", ModelSettings(), tools, None, [], ModelTracing.DISABLED, previous_response_id=None
        )
        assert response.output[0].content[0].text == "hi"  # type: ignore[union-attr]
        sent.append(recorder.sent())
        await client.close()
    assert sent[1] == sent[0]
    assert [tool["function"]["name"] for tool in sent[1][0][3]["tools"]] == ["get_current_time", "get_user_analytics"]


def test_the_lean_client_keeps_its_resource_across_copies():
    client = LeanAsyncOpenAI(api_key="sk-test", base_url="http://model.test/v1")
    assert isinstance(client.chat.completions, LeanCompletions)
    assert isinstance(client.with_options(max_retries=0).chat.completions, LeanCompletions)


async def test_a_plain_json_body_skips_the_transform_and_anything_else_goes_through_it(monkeypatch):
    from openai.resources.chat.completions import completions

    calls = []
    transform = completions.async_maybe_transform

    async def counted(data: object, expected_type: object) -> object:
        calls.append(expected_type)
        return await transform(data, expected_type)  # type: ignore[arg-type]

    monkeypatch.setattr(completions, "async_maybe_transform", counted)
    client = _client(LeanAsyncOpenAI, Recorder())
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    assert calls == []
    await client.chat.completions.create(model="m", messages=({"role": "user", "content": "hi"},))
    assert len(calls) == 1
    await client.close()


async def test_the_raw_response_wrapper_goes_through_the_lean_create_too():
    recorders = []
    for cls in (openai.AsyncOpenAI, LeanAsyncOpenAI):
        recorder = Recorder()
        client = _client(cls, recorder)
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-request-id"] == "req-1"
        assert raw.parse().choices[0].message.content == "hi"
        recorders.append(recorder)
        await client.close()
    assert recorders[1].sent() == recorders[0].sent()
