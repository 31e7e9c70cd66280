"""Kubernetes manifests validate against the Kubernetes schemas; compose and Dockerfiles hold together.

Docker does not run on these machines: these checks are what can be verified without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from analytics_service.core.config import Settings as AnalyticsSettings
from chat_service.core.config import Settings as ChatSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
# The OpenTelemetry SDK's own variables, read by servicekit.tracing and the SDK (docs/observability.md).
OTEL_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
}
APP_SERVICES = ("postgres", "analytics", "chat")  # compose's other services are the observability stack


def documents():
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


def known_setting(name: str) -> bool:
    """True when an environment variable name maps onto a real setting (catches typos)."""
    for prefix, settings in (("CHAT_", ChatSettings), ("ANALYTICS_", AnalyticsSettings)):
        if name.startswith(prefix):
            field, _, nested = name.removeprefix(prefix).lower().partition("__")
            if field not in settings.model_fields:
                return False
            if nested:
                model = settings.model_fields[field].annotation
                return nested in model.model_fields  # type: ignore[union-attr]
            return True
    if name in OTEL_VARIABLES:
        return True
    return name in {"OPENAI_API_KEY", "OPENAI_BASE_URL", "POSTGRES_PASSWORD", "POSTGRES_DB", "POSTGRES_USER", "PGDATA"}


@pytest.mark.parametrize(("name", "document"), list(documents()), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_valid_kubernetes(name, document):
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_the_cluster_has_what_operators_expect():
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in documents()}
    for expected in [
        ("StatefulSet", "chat"),
        ("Deployment", "analytics"),
        ("Service", "chat"),
        ("Service", "analytics"),
        ("HorizontalPodAutoscaler", "chat"),
        ("PodDisruptionBudget", "chat"),
        ("PodDisruptionBudget", "analytics"),
        ("ConfigMap", "daca-config"),
        ("Secret", "daca-secrets"),
        ("StatefulSet", "postgres"),
    ]:
        assert expected in kinds


def test_deployments_have_probes_resources_and_run_as_non_root():
    for _, document in documents():
        if document["kind"] not in ("Deployment", "StatefulSet") or document["metadata"]["name"] == "postgres":
            continue
        spec = document["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def _chat() -> dict:
    return next(d for _, d in documents() if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "chat")


def test_chat_s_outbox_outlives_its_pod_on_scale_down():
    """Records chat answered 200 for must survive scale-down while analytics is down."""
    chat = _chat()["spec"]
    mount = next(m for c in chat["template"]["spec"]["containers"] for m in c["volumeMounts"] if m["mountPath"] == "/app/data")
    claim = next(t for t in chat["volumeClaimTemplates"] if t["metadata"]["name"] == mount["name"])
    assert mount["name"] not in {v["name"] for v in chat["template"]["spec"]["volumes"]}, "a claim, not an emptyDir"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert chat["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    config = next(d for _, d in documents() if d["kind"] == "ConfigMap")
    assert config["data"]["CHAT_OUTBOX_PATH"].startswith("/app/data/"), "the outbox file is on the claim"
    services = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "Service"}
    assert services[chat["serviceName"]]["spec"]["clusterIP"] == "None"
    autoscaler = next(d for _, d in documents() if d["kind"] == "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "chat"}


def test_every_configured_variable_is_a_real_setting():
    names = set()
    for _, document in documents():
        if document["kind"] in ("ConfigMap", "Secret"):
            names |= set(document.get("data", {})) | set(document.get("stringData", {}))
        if document["kind"] in ("Deployment", "StatefulSet"):
            for container in document["spec"]["template"]["spec"]["containers"]:
                names |= {env["name"] for env in container.get("env", [])}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in APP_SERVICES:
        names |= set(compose["services"][name].get("environment", {}))
    unknown = sorted(n for n in names if not known_setting(n))
    assert unknown == []


def test_compose_runs_analytics_on_postgres_and_chat_in_front():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(APP_SERVICES) <= set(services)
    assert services["analytics"]["environment"]["ANALYTICS_DATABASE_URL"].startswith("postgresql://")
    assert services["analytics"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["chat"]["environment"]["CHAT_ANALYTICS_URL"] == "http://analytics:8001"
    token = services["analytics"]["environment"]["ANALYTICS_API_TOKEN"]
    assert services["chat"]["environment"]["CHAT_ANALYTICS_API_TOKEN"] == token
    for name in APP_SERVICES:
        assert "healthcheck" in services[name], name
    for name in ("analytics", "chat"):
        dockerfile = DEPLOY.parent / services[name]["build"]["dockerfile"]
        assert dockerfile.exists()


def test_end_user_auth_is_on_in_compose_and_kubernetes():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["chat"]["environment"]
    assert compose["CHAT_AUTH_JWT_SECRET"].startswith("${CHAT_AUTH_JWT_SECRET:?"), "compose refuses to start without a secret"
    assert compose["CHAT_AUTH_ISSUER"] and compose["CHAT_AUTH_AUDIENCE"]
    config = next(d for _, d in documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "daca-config")["data"]
    settings = ChatSettings(**{k.removeprefix("CHAT_").lower(): v for k, v in config.items() if k.startswith("CHAT_AUTH_")})
    assert settings.auth_enabled and settings.auth_issuer and settings.auth_audience


@pytest.mark.parametrize("service", ["chat", "analytics"])
def test_dockerfiles_are_multi_stage_non_root_and_checked(service):
    text = (DEPLOY / f"{service}.Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    assert "uv sync --frozen --no-dev" in text
    assert re.search(r"^USER 10001$", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text
    module = "chat_service" if service == "chat" else "analytics_service"
    assert f'"{module}.main:app"' in text
