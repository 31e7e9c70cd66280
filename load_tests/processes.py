"""Real service processes for tests, chaos runs, benchmarks and the quick start."""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

# How every service is launched (here, in serve, the Dockerfiles and the manifests; see
# docs/overload.md): a request read timeout and a connection cap below the descriptor limit
# (the protocol class), uvicorn's own last-resort cap on connections and tasks, a listen
# backlog the size of the kernel's default somaxconn, and keep-alive as uvicorn's default.
SERVER_FLAGS = (
    "--http",
    "servicekit.connections:GuardedHttpToolsProtocol",
    "--limit-concurrency",
    "4096",
    "--backlog",
    "4096",
    "--timeout-keep-alive",
    "5",
)
# The images' event loop (the Dockerfiles and manifests add it; uvicorn's default picks uvloop too
# when it is installed). Benchmarks say it outright.
LOOP_FLAGS = ("--loop", "uvloop")
SERVICE_APPS = frozenset({"chat_service.main:app", "analytics_service.main:app"})
_SERVER_OPTIONS = frozenset(flag for flag in SERVER_FLAGS if flag.startswith("--"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One `uvicorn module:app` child process on 127.0.0.1, with its output in a log file."""

    def __init__(
        self,
        app: str,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        workers: int = 1,
        extra_args: tuple[str, ...] = (),
        open_files: tuple[int, int] | None = None,
    ) -> None:
        overridden = _SERVER_OPTIONS & set(extra_args)
        if app in SERVICE_APPS and overridden:
            # uvicorn takes the last value: a benchmark would measure a server we do not ship.
            raise ValueError(f"{app} runs with SERVER_FLAGS as shipped; do not override {sorted(overridden)}")
        self.app = app
        self.port = port or free_port()
        self.env = dict(env or {})
        self.log_path = log_path
        self.workers = workers
        self.extra_args = extra_args
        self.open_files = open_files  # (soft, hard) RLIMIT_NOFILE for the child, as a smaller host would have
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, wait: float = 30.0) -> ServiceProcess:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            self.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--timeout-graceful-shutdown",
            "10",
            "--no-access-log",
            *SERVER_FLAGS,
            *self.extra_args,
        ]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._drop_metrics_dir()
        if self.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in env:
            # Workers share metric values through files in a directory that must start empty
            # (prometheus_client's multiprocess mode): a fresh one for every run.
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="prometheus-"))
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        output = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - None: our terminal
        try:
            limits = None if self.open_files is None else functools.partial(_limit_open_files, self.open_files)
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, preexec_fn=limits
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own copy
        if wait:
            self.wait_ready(wait)
        return self

    def wait_ready(self, timeout: float = 30.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.app} exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + path, timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.app} did not become ready on port {self.port}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        self.signal(signal.SIGKILL)
        self.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for a graceful exit (SIGKILL after `timeout`)."""
        if self.process is None or self.process.poll() is not None:
            self._drop_metrics_dir()
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        self.process.terminate()
        code = self.wait(timeout)
        self._drop_metrics_dir()
        return code

    def _drop_metrics_dir(self) -> None:
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None

    def wait(self, timeout: float = 20.0) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _limit_open_files(limits: tuple[int, int]) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def analytics_env(database_url: str, **extra: str) -> dict[str, str]:
    return {"ANALYTICS_DATABASE_URL": database_url, "ANALYTICS_LOG_FORMAT": "json", **extra}


def chat_env(analytics_url: str, outbox_path: str | Path, *, model_url: str | None = None, **extra: str) -> dict[str, str]:
    """Chat's environment: the offline model, or with `model_url` the OpenAI-compatible server there
    (a fake one the caller started; its API lives under /v1)."""
    model = (
        {"CHAT_LLM_PROVIDER": "offline"}
        if model_url is None
        else {"CHAT_LLM_PROVIDER": "openai", "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": model_url + "/v1"}
    )
    return {
        "CHAT_ANALYTICS_URL": analytics_url,
        "CHAT_OUTBOX_PATH": str(outbox_path),
        "CHAT_LOG_FORMAT": "json",
        **model,
        **extra,
    }


def sqlite_analytics(work: Path) -> tuple[ServiceProcess, Path]:
    """Analytics on a SQLite file in `work`, logging warnings only, as the benchmarks run it (not started)."""
    db = work / "analytics.sqlite3"
    process = ServiceProcess(
        "analytics_service.main:app",
        extra_args=("--loop", "uvloop"),
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{db}", ANALYTICS_LOG_LEVEL="WARNING"),
    )
    return process, db


def seed_users(analytics_url: str, user_ids: list[str]) -> None:
    """Give each user one message, so that chat's reads of their counts are 200s, not 404s."""
    for start in range(0, len(user_ids), 500):
        items = [
            {"user_id": user, "message_id": "seed", "timestamp": "2025-01-01T00:00:00Z"} for user in user_ids[start : start + 500]
        ]
        httpx.post(analytics_url + "/messages/batch", json={"items": items}, timeout=30).raise_for_status()


def counted_messages(db: Path) -> int:
    """Every message analytics has counted, read from its SQLite file."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(message_count), 0) FROM user_counts").fetchone()[0])


def outbox_drained(chat_url: str, timeout: float) -> bool:
    """Wait until chat's outbox is empty; False if it was not within `timeout`."""
    deadline = time.monotonic() + timeout
    while httpx.get(chat_url + "/health/dependencies", timeout=30).json()["outbox"]["depth"] != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
