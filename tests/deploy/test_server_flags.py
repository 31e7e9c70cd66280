"""Every place that launches a service runs uvicorn with the same overload flags (docs/overload.md)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from load_tests.processes import SERVER_FLAGS, SERVICE_APPS, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


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


@pytest.mark.parametrize("service", ["chat", "analytics"])
def test_the_manifests_run_exactly_the_image_s_command(service):
    text = (DEPLOY / f"{service}.Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    for document in yaml.safe_load_all((DEPLOY / "k8s" / f"{service}.yaml").read_text()):
        if document and document["kind"] in ("Deployment", "StatefulSet"):
            (container,) = document["spec"]["template"]["spec"]["containers"]
            assert container["command"] == json.loads(cmd.group(1))


def test_compose_runs_the_images_commands():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name in ("chat", "analytics"):
        assert services[name]["build"]["dockerfile"] == f"deploy/{name}.Dockerfile"
        assert "command" not in services[name] and "entrypoint" not in services[name], "the image's CMD carries the flags"


def test_a_service_process_refuses_flags_that_would_override_the_server_flags():
    with pytest.raises(ValueError, match="--http"):
        ServiceProcess("chat_service.main:app", extra_args=("--http", "httptools"))
    with pytest.raises(ValueError, match="--limit-concurrency"):
        ServiceProcess("analytics_service.main:app", extra_args=("--limit-concurrency", "10"))
    ServiceProcess("chat_service.main:app", extra_args=("--loop", "asyncio"))  # not a server flag
    ServiceProcess("load_tests.floor_app:app", extra_args=("--http", "httptools"))  # not one of ours


def _service_launches() -> list[tuple[str, int, list[str]]]:
    """Every `ServiceProcess(<our service>, extra_args=...)` in the repository, with its extra args resolved."""
    launches = []
    for path in sorted([*ROOT.joinpath("load_tests").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        constants = {
            target.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("ServiceProcess") and node.args):
                continue
            app = node.args[0]
            if not (isinstance(app, ast.Constant) and app.value in SERVICE_APPS):
                continue
            for keyword in node.keywords:
                if keyword.arg == "extra_args":
                    value = keyword.value
                    if isinstance(value, ast.Name):
                        value = constants.get(value.id, value)
                    strings = [n.value for n in ast.walk(value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                    launches.append((str(path.relative_to(ROOT)), node.lineno, strings))
    return launches


def test_no_launcher_overrides_the_server_flags_of_our_services():
    launches = _service_launches()
    assert any(path == "load_tests/bench.py" for path, _, _ in launches), "the scan must see the benchmarks' launches"
    assert any(args == ["--http", "httptools"] for _, _, args in launches), "and resolve literal extra args"
    options = {flag for flag in SERVER_FLAGS if flag.startswith("--")}
    here = str(Path(__file__).resolve().relative_to(ROOT))  # the refusal test above breaks the rule on purpose
    offenders = [(path, line, args) for path, line, args in launches if options & set(args) and path != here]
    assert offenders == [], "these would run chat or analytics with other server flags than the images"
