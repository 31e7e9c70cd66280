"""Every place that launches a service runs uvicorn with the same overload flags (docs/overload.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from load_tests.processes import SERVER_FLAGS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _has_flags(command: list[str]) -> bool:
    text = " ".join(command)
    return " ".join(SERVER_FLAGS) in text


@pytest.mark.parametrize("service", ["chat", "analytics"])
def test_the_images_run_uvicorn_with_the_server_flags(service):
    text = (DEPLOY / f"{service}.Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    assert _has_flags(json.loads(cmd.group(1)))


@pytest.mark.parametrize("service", ["chat", "analytics"])
def test_the_manifests_run_uvicorn_with_the_server_flags(service):
    for document in yaml.safe_load_all((DEPLOY / "k8s" / f"{service}.yaml").read_text()):
        if document and document["kind"] in ("Deployment", "StatefulSet"):
            (container,) = document["spec"]["template"]["spec"]["containers"]
            assert _has_flags(container["command"])
            assert container["command"][:2] == ["uvicorn", f"{service}_service.main:app"]


def test_compose_gives_the_services_room_for_connections():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name in ("chat", "analytics"):
        assert services[name]["ulimits"]["nofile"]["soft"] >= 65536
