"""The Locust profile, run headless and distributed against real services."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from load_tests.processes import ROOT, free_port

pytestmark = pytest.mark.integration

LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / "locustfile.py")]


def stats(prefix) -> dict[str, dict[str, str]]:
    with open(f"{prefix}_stats.csv") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def test_headless_run_passes_its_checks(make_stack, tmp_path):
    stack = make_stack()
    prefix = tmp_path / "run"
    result = subprocess.run(
        [
            *LOCUST,
            "--host",
            stack.chat.url,
            "--headless",
            "-u",
            "10",
            "-r",
            "10",
            "-t",
            "6s",
            "--only-summary",
            "--exit-code-on-error",
            "1",
            "--csv",
            str(prefix),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = stats(prefix)
    assert int(rows["Aggregated"]["Request Count"]) > 20
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert {"/chat/ greeting", "/users/[id]/analytics", "/chat/stream", "/chat/stream first delta"} <= set(rows)
    first_delta, whole = rows["/chat/stream first delta"], rows["/chat/stream"]
    # A stream the run's end cuts short has had its first delta but no end: at most one per user (10).
    finished, started = int(whole["Request Count"]), int(first_delta["Request Count"])
    assert finished >= 5 and finished <= started <= finished + 10
    assert float(first_delta["Median Response Time"]) <= float(whole["Median Response Time"])


def test_failures_make_the_exit_code_non_zero(make_stack, tmp_path):
    stack = make_stack(chat_extra={"CHAT_RATE_LIMIT_PER_MINUTE": "1"})  # the second chat of a user gets 429
    result = subprocess.run(
        [
            *LOCUST,
            "--host",
            stack.chat.url,
            "--headless",
            "-u",
            "5",
            "-r",
            "5",
            "-t",
            "5s",
            "--only-summary",
            "--exit-code-on-error",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 1


def test_distributed_master_and_worker(make_stack, tmp_path):
    stack = make_stack()
    prefix = tmp_path / "dist"
    port = str(free_port())
    master = subprocess.Popen(
        [
            *LOCUST,
            "--host",
            stack.chat.url,
            "--master",
            "--master-bind-port",
            port,
            "--expect-workers",
            "1",
            "--headless",
            "-u",
            "6",
            "-r",
            "6",
            "-t",
            "5s",
            "--only-summary",
            "--csv",
            str(prefix),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    worker = subprocess.Popen(
        [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        _, err = master.communicate(timeout=120)
        assert master.returncode == 0, err[-2000:]
        assert int(stats(prefix)["Aggregated"]["Request Count"]) > 10
    finally:
        worker.wait(timeout=30)
        if master.poll() is None:
            master.kill()
