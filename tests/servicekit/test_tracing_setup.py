"""When tracing is on, and which exporter it uses: the OTEL_* variables, as the SDK documents them."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

from servicekit.tracing import Tracing, _otlp_exporter, tracing_requested

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),  # compose and Kubernetes pass unset as ""
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_SERVICE_NAME": "chat"}, False),
    ],
)
def test_tracing_is_on_only_with_an_endpoint_and_not_disabled(environ, on):
    assert tracing_requested(environ) is on
    assert (Tracing.from_environ("chat", environ) is not None) is on


def test_the_protocol_picks_the_exporter_and_json_is_refused():
    assert isinstance(_otlp_exporter(ENDPOINT), HttpExporter)
    assert isinstance(_otlp_exporter({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), GrpcExporter)
    assert isinstance(_otlp_exporter({**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}), HttpExporter)
    with pytest.raises(ValueError, match="http/json"):
        _otlp_exporter({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_service_name_defaults_to_the_service_and_otel_service_name_wins():
    assert Tracing("chat", environ=ENDPOINT).provider.resource.attributes["service.name"] == "chat"
    named = Tracing("chat", environ={**ENDPOINT, "OTEL_SERVICE_NAME": "chat-eu"})
    assert named.provider.resource.attributes["service.name"] == "chat-eu"
