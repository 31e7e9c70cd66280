"""`python -m load_tests.serve`: a newcomer's first run, and what happens when they kill analytics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from load_tests.processes import ROOT, free_port
from load_tests.serve import parse

pytestmark = pytest.mark.integration


def test_help_names_the_ports_and_says_openai_base_url_needs_its_v1(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    assert "--chat-port" in text and "--analytics-port" in text
    assert "OPENAI_BASE_URL" in text and "/v1" in text


def wait_for(output: Path, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, output.read_text())
        if match:
            return match
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared in serve's output:\n{output.read_text()}")


def test_killing_analytics_leaves_chat_answering_and_serve_restarts_it(tmp_path):
    chat_port, analytics_port = free_port(), free_port()
    output = tmp_path / "serve.out"
    command = [sys.executable, "-m", "load_tests.serve", "--chat-port", str(chat_port), "--analytics-port", str(analytics_port)]
    with open(output, "wb") as out:
        serve = subprocess.Popen([*command, "--data-dir", str(tmp_path / "data")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        banner = wait_for(output, r"chat on http://127\.0\.0\.1:(\d+), analytics on .*--chat-port, --analytics-port")
        assert int(banner.group(1)) == chat_port
        first = int(wait_for(output, r"analytics ready on \S+ \(pid (\d+)\)").group(1))
        chat = f"http://127.0.0.1:{chat_port}"
        message = {"user_id": "alice", "text": "hi"}
        assert "5 messages" in httpx.post(chat + "/chat/", json=message, timeout=10).json()["reply"]

        os.kill(first, signal.SIGKILL)
        wait_for(output, rf"analytics \(pid {first}\) stopped: killed by SIGKILL\. chat keeps answering", 15)
        wait_for(output, r"restarting analytics in 1 s", 5)
        assert httpx.post(chat + "/chat/", json=message, timeout=10).status_code == 200, "chat answers while analytics is down"

        second = int(wait_for(output, rf"analytics ready on \S+ \(pid (?!{first}\))(\d+)\)", 60).group(1))
        assert second != first
        assert httpx.get(f"http://127.0.0.1:{analytics_port}/healthz", timeout=5).status_code == 200
        deadline = time.monotonic() + 15  # the record chat kept while analytics was away arrives
        while httpx.get(f"http://127.0.0.1:{analytics_port}/analytics/alice", timeout=5).json()["message_count"] != 7:
            assert time.monotonic() < deadline, "the outbox never delivered after the restart"
            time.sleep(0.1)
        assert serve.poll() is None
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(30)
    assert code == 0
    assert "stopping chat" in output.read_text()
