"""structlog set-up: JSON lines on stdout, or pretty lines on a terminal."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Literal

import structlog
from opentelemetry import trace

from .context import current_request_id

LogFormat = Literal["auto", "json", "console"]

_SECRET_KEYS = frozenset({"authorization", "api_key", "token", "openai_api_key", "password"})


def _redact(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


def _add_request_id(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    request_id = current_request_id()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def add_trace_ids(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """The current span's trace and span ids, so a log line leads to its trace (only inside a span)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


class _LineLogger:
    """structlog's `PrintLogger`, but each line and its newline leave in one write().

    Workers share one stdout. With PYTHONUNBUFFERED (our images set it) `print()` writes a line
    and its newline apart, and another worker's line can land between them: two JSON lines run
    together (seen in a CI run). Like `PrintLogger`, it writes to whatever `sys.stdout` is now,
    so a stream swapped after configuration (pytest's capture) is followed, never a closed one.
    structlog's `WriteLogger` also writes once, but binds the stream when a logger is made: tried,
    the lines of apps whose tests capture stdout went to a stream nobody read.
    One write is whole on a regular file opened for appending; on a pipe only up to PIPE_BUF
    (4 KiB), so a line with a long traceback can still be cut there (as with any logger).
    """

    def msg(self, message: str) -> None:
        stdout = sys.stdout
        if stdout is None:  # no stdout at all (pythonw): nothing to write to, as print() does
            return
        stdout.write(message + "\n")
        stdout.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _line_logger(*_: object) -> _LineLogger:
    return _LineLogger()


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger whose lines carry `component=name`."""
    # Lazy: a logger made at import time must still follow configure_logging() later.
    return structlog.get_logger(component=name)  # type: ignore[no-any-return]


def configure_logging(*, level: str = "INFO", fmt: LogFormat = "auto", trace_ids: bool = False) -> None:
    """Configure structlog and route stdlib logging (uvicorn's too) through the same renderer.

    Called from each app's lifespan, so importing a service never touches global logging.
    `trace_ids` adds `trace_id`/`span_id` to every line written inside a span (when tracing is
    on; off, no span exists and the processor is left out).
    """
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    pid = os.getpid()  # each worker configures its own logging: which worker wrote a line

    def add_pid(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        event.setdefault("pid", pid)
        return event

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        *([add_trace_ids] if trace_ids else []),
        add_pid,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.typing.Processor = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_line_logger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our middleware writes one access line per request; uvicorn's own would double it.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per analytics call is noise
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class Throttle:
    """At most one log line per key every `every` seconds: a flood of one event must not flood the log.

    `allow(key)` is None while the line is held back, else how many were held back since the last one.
    """

    def __init__(self, every: float = 5.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
