"""OpenTelemetry tracing from the standard `OTEL_*` variables: off, and free, unless an endpoint is set.

On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and
`OTEL_SDK_DISABLED` is not true, nor `OTEL_TRACES_EXPORTER=none`). Then:
- incoming requests get a server span that continues the caller's `traceparent` (the FastAPI
  instrumentation, outermost, so every middleware and log line of the request is inside it);
- every aiohttp client session made afterwards carries the trace (the aiohttp-client
  instrumentation): the analytics client and the model clients both run on aiohttp;
- spans leave in batches over OTLP (`OTEL_EXPORTER_OTLP_PROTOCOL`: http/protobuf by default,
  or grpc), with `OTEL_SERVICE_NAME` (default: the service's own name), `OTEL_TRACES_SAMPLER`
  and the `OTEL_BSP_*` batch settings read by the SDK itself.

When off, no span, no middleware, no thread and no log processor exist: callers get `None` and
skip their tracing code with one `is None` test.

`Tracing` is made in `create_app` (the provider has no thread until `start`), so the server
middleware is part of the app from its first request; the exporter starts in the lifespan.
The SDK and the instrumentations are imported only then: ~0.4 s of start-up a service with
tracing off does not pay.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["ENDPOINT_VARIABLES", "Tracing", "tracing_requested"]

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Probes and scrapes are no one's request: tracing them would bury the chats.
UNTRACED_PATHS = "/healthz,/readyz,/metrics"
_TRUE = frozenset({"true", "1", "yes", "on"})


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter for the configured protocol; it reads its endpoint, headers and timeout itself."""
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf or grpc")


class Tracing:
    """One service's tracer provider, its instrumentations and its exporter.

    `exporter` (tests: an in-memory one) or `processor` replace the OTLP batch exporter.
    """

    def __init__(
        self,
        service_name: str,
        *,
        exporter: SpanExporter | None = None,
        processor: SpanProcessor | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider

        name = environ.get("OTEL_SERVICE_NAME", "").strip() or service_name
        # No atexit hook: the lifespan shuts the provider down (and flushes it) itself.
        self.provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}), shutdown_on_exit=False)
        self.service_name = name
        self._environ = environ
        self._exporter = exporter
        self._processor = processor
        self._started = False

    @classmethod
    def from_environ(cls, service_name: str, environ: Mapping[str, str] = os.environ) -> Tracing | None:
        """Tracing as the `OTEL_*` variables ask, or None (off: nothing to pay for)."""
        return cls(service_name, environ=environ) if tracing_requested(environ) else None

    def tracer(self, name: str) -> trace.Tracer:
        return self.provider.get_tracer(name)

    def instrument_app(self, app: FastAPI) -> None:
        """Server spans for every request but probes and scrapes; call it in `create_app`."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        excluded = self._environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or UNTRACED_PATHS
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls=excluded,
            exclude_spans=["receive", "send"],  # a span per ASGI message says nothing and costs
        )

    def start(self) -> None:
        """Start exporting, and trace the aiohttp sessions made from now on; call it in the lifespan."""
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if self._started:
            return
        processor = self._processor
        if processor is None:
            exporter = self._exporter or _otlp_exporter(self._environ)
            processor = BatchSpanProcessor(exporter)  # reads OTEL_BSP_* itself
        self.provider.add_span_processor(processor)
        instrumentor = AioHttpClientInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=self.provider)
        self._started = True

    def stop(self) -> None:
        """Stop tracing new aiohttp sessions and flush what is left; call it as the lifespan ends."""
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        if not self._started:
            return
        AioHttpClientInstrumentor().uninstrument()
        self.provider.shutdown()
        self._started = False
