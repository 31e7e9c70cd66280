"""Schemathesis, run as a REST client would run it, against both services as real processes:
every check (`-c all`) with valid and invalid inputs (`--mode all`), all four phases (examples,
coverage, fuzzing, stateful). It must find nothing. FUZZ_EXAMPLES=1000 searches deeper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.processes import ServiceProcess, analytics_env

pytestmark = pytest.mark.integration

EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "50")


CHAT_CONFIG = Path(__file__).with_name("schemathesis-chat.toml")


def schemathesis(url: str, workdir, *extra: str, config: Path | None = None) -> None:
    command = [
        *(sys.executable, "-m", "schemathesis.cli", *(("--config-file", str(config)) if config else ())),
        *("run", f"{url}/openapi.json"),
        *("--checks", "all", "--mode", "all", "--max-examples", EXAMPLES),
        *("--request-timeout", "30", "--generation-database", "none", "--no-color", *extra),
    ]
    run = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600, check=False)
    output = run.stdout + run.stderr
    report = output[output.find("FAILURES") :] if "FAILURES" in output else output[-4000:]
    assert run.returncode == 0, f"schemathesis found something (rerun with the seed it printed):\n{report}"
    assert "No issues found" in output, output[-2000:]


def test_chat(live, tmp_path):
    schemathesis(live.chat.url, tmp_path, config=CHAT_CONFIG)


def test_analytics(live, tmp_path):
    schemathesis(live.analytics.url, tmp_path)


def test_analytics_with_a_token(tmp_path):
    """Configured with a token, the schema declares bearer auth and schemathesis checks it is enforced."""
    token = "contract-fuzz-token"
    env = analytics_env(f"sqlite:///{tmp_path}/analytics.sqlite3", ANALYTICS_API_TOKEN=token)
    with ServiceProcess("analytics_service.main:app", log_path=tmp_path / "analytics.log", env=env) as analytics:
        schemathesis(analytics.url, tmp_path, "--header", f"Authorization: Bearer {token}")
    assert "Traceback" not in (tmp_path / "analytics.log").read_text()
