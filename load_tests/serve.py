"""Start both services in the foreground (offline model, SQLite): `uv run python -m load_tests.serve`.

Ctrl-C stops both cleanly (SIGTERM, so chat flushes its outbox first). Either service may be
stopped or killed on its own to watch the other cope: `serve` says what happened and starts it
again with backoff (1 s, 2 s, 4 s ... 30 s), so chat keeps answering while analytics is away.

A real model: set OPENAI_API_KEY (and CHAT_MODEL) first. OPENAI_BASE_URL is used as given,
as the OpenAI client's base URL: include the API's path prefix, usually `/v1`
(`http://localhost:11434/v1` for Ollama, `http://localhost:8080/v1` for vLLM or llama.cpp).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from .processes import ServiceProcess

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # up this long: the next exit starts the backoff over

CONSEQUENCES = {
    "analytics": "chat keeps answering: counts fall back to 0 and records wait in chat's outbox until analytics is back",
    "chat": "analytics keeps its counts; chat's outbox file keeps unsent records for the next start",
}


def say(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} serve: {message}", flush=True)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervised:
    """One service process that is started again, with backoff, whenever it exits on its own."""

    def __init__(self, name: str, process: ServiceProcess, *, restart: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.process = process
        self.restart = restart
        self.clock = clock
        self.backoff = FIRST_BACKOFF
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.ready = False
        self.gone = False  # exited, and not to be restarted

    def start(self) -> None:
        self.process.start(wait=0)
        self.started_at = self.clock()
        self.restart_at = None
        self.ready = False
        say(f"{self.name} starting on {self.process.url} (pid {self.process.pid})")

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.process.wait_ready(timeout)
        self._announce_ready()

    def tick(self) -> None:
        """Notice an exit, restart when its backoff is over, announce readiness."""
        now = self.clock()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        if self.gone:
            return
        process = self.process.process
        code = process.poll() if process is not None else None
        if code is None:
            if not self.ready and _answers(self.process.url):
                self._announce_ready()
            if now - self.started_at >= STABLE_AFTER:
                self.backoff = FIRST_BACKOFF
            return
        say(f"{self.name} (pid {self.process.pid}) stopped: {describe_exit(code)}. {CONSEQUENCES[self.name]}")
        if not self.restart:
            self.gone = True
            say(f"not restarting {self.name} (--no-restart); Ctrl-C stops serve")
            return
        say(f"restarting {self.name} in {self.backoff:g} s")
        self.restart_at = now + self.backoff
        self.backoff = min(MAX_BACKOFF, self.backoff * 2)

    def _announce_ready(self) -> None:
        self.ready = True
        say(f"{self.name} ready on {self.process.url} (pid {self.process.pid})")

    def stop(self) -> None:
        if self.process.process is not None:
            self.process.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chat-port", type=int, default=8000, help="chat's port (default 8000)")
    parser.add_argument("--analytics-port", type=int, default=8001, help="analytics' port (default 8001)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the SQLite files go (default ./data)")
    parser.add_argument("--no-demo-data", action="store_true", help="do not load alice=5, bob=3")
    parser.add_argument("--no-restart", action="store_true", help="leave a service that exits stopped (the other keeps running)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    data = args.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    analytics = ServiceProcess(
        "analytics_service.main:app",
        port=args.analytics_port,
        env={
            "ANALYTICS_SEED_DEMO_DATA": "false" if args.no_demo_data else "true",
            "ANALYTICS_DATABASE_URL": os.environ.get("ANALYTICS_DATABASE_URL", f"sqlite:///{data / 'analytics.sqlite3'}"),
        },
    )
    chat = ServiceProcess(
        "chat_service.main:app",
        port=args.chat_port,
        env={
            "CHAT_ANALYTICS_URL": os.environ.get("CHAT_ANALYTICS_URL", analytics.url),
            "CHAT_OUTBOX_PATH": os.environ.get("CHAT_OUTBOX_PATH", str(data / "chat-outbox.sqlite3")),
        },
    )
    services = [
        Supervised("analytics", analytics, restart=not args.no_restart),
        Supervised("chat", chat, restart=not args.no_restart),
    ]
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_ready()
        say(
            f"chat on {chat.url}, analytics on {analytics.url} (ports: --chat-port, --analytics-port). Ctrl-C stops both.\n"
            f"  Try the resilience: kill analytics (kill -9 {analytics.pid}, or kill -STOP/-CONT to freeze it): chat keeps\n"
            f"  answering, and serve starts analytics again. A real model: OPENAI_API_KEY, and OPENAI_BASE_URL with its /v1."
        )
        while not stop:
            for service in services:
                service.tick()
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C (or the one `uv run` forwards) must not cut the clean stop short and leave
        # analytics running on its port.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("stopping chat (it delivers its outbox first), then analytics")
        for service in reversed(services):
            service.stop()


if __name__ == "__main__":
    main()
