"""One agent run under a whole-run deadline, with every LLM failure mapped to a clear status."""

from __future__ import annotations

import asyncio

import openai
from agents import Agent, AgentsException, RunConfig, Runner

from servicekit.logging import get_logger

from .tools import ChatContext

log = get_logger("llm")


class LLMFailure(Exception):
    """The model could not produce a reply; `status` is 502, 503 or 504."""

    def __init__(self, status: int, detail: str, kind: str, retry_after: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.retry_after = retry_after


async def run_agent(
    agent: Agent[ChatContext],
    text: str,
    context: ChatContext,
    *,
    run_config: RunConfig,
    deadline: float,
    max_turns: int,
) -> str:
    try:
        async with asyncio.timeout(deadline):
            result = await Runner.run(agent, input=text, context=context, run_config=run_config, max_turns=max_turns)
    except TimeoutError:
        raise LLMFailure(504, "The model did not answer in time", "deadline") from None
    except openai.APITimeoutError:
        raise LLMFailure(504, "The model provider timed out", "timeout") from None
    except openai.RateLimitError as error:
        retry_after = error.response.headers.get("retry-after")
        raise LLMFailure(503, "The model provider is rate limiting us", "rate_limited", retry_after) from None
    except openai.APIConnectionError:
        raise LLMFailure(503, "The model provider cannot be reached", "connect") from None
    except openai.APIStatusError as error:
        raise LLMFailure(502, f"The model provider answered {error.status_code}", "status") from None
    except (AgentsException, openai.OpenAIError):
        raise LLMFailure(502, "The model gave an answer we cannot use", "invalid") from None
    except Exception:
        # SDKs fail in arbitrary ways on malformed provider replies (the openai client raises
        # AttributeError on a non-JSON body). Keep the traceback in our log, not in the reply.
        log.exception("llm_unexpected_error")
        raise LLMFailure(502, "The model gave an answer we cannot use", "invalid") from None
    reply = result.final_output
    if not isinstance(reply, str) or not reply.strip():
        raise LLMFailure(502, "The model gave an empty answer", "empty")
    return reply
