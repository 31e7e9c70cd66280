"""Chaos run: steady chat load while analytics is killed, frozen, and chat itself restarted.

`uv run python -m load_tests.chaos --out reports/chaos` starts analytics and chat as real
processes and drives closed-loop load. Timeline: baseline -> SIGKILL analytics (down a while,
then restarted) -> SIGSTOP analytics (then SIGCONT) -> SIGTERM chat and start it again ->
tail. It then waits for chat's outbox to drain and checks that every user's analytics count
equals the number of 200 replies that user got. It writes `report.json` and `report.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from .loadgen import percentile
from .processes import ServiceProcess, analytics_env, chat_env

COUNT = re.compile(r"You have sent (\d+) messages")


@dataclass
class Reply:
    started: float
    latency: float
    status: int
    user: str
    count: int | None


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    fault: bool = False


@dataclass
class Timings:
    baseline: float = 5.0
    down: float = 5.0
    frozen: float = 5.0
    recovery: float = 6.0
    tail: float = 5.0


@dataclass
class ChaosRun:
    work: Path
    timings: Timings
    workers: int = 8
    users: int = 40
    think: float = 0.02
    breaker_reset: float = 2.0
    replies: list[Reply] = field(default_factory=list)
    connection_errors: list[float] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    transitions: list[dict[str, object]] = field(default_factory=list)
    returns: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefix = f"chaos-{uuid.uuid4().hex[:6]}"
        self.t0 = time.monotonic()
        self.analytics = ServiceProcess(
            "analytics_service.main:app",
            log_path=self.work / "analytics.log",
            env=analytics_env(f"sqlite:///{self.work}/analytics.sqlite3"),
        )
        reset = str(self.breaker_reset)
        self.chat = ServiceProcess(
            "chat_service.main:app",
            log_path=self.work / "chat.log",
            env=chat_env(
                self.analytics.url,
                self.work / "outbox.sqlite3",
                CHAT_ANALYTICS_READ__BREAKER_RESET=reset,
                CHAT_ANALYTICS_RECORD__BREAKER_RESET=reset,
            ),
        )
        self._running = True

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _worker(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.chat.url, timeout=30) as client:
            n = index
            while self._running:
                user = f"{self.prefix}-{n % self.users}"
                n += self.workers
                started = self.now()
                try:
                    response = await client.post("/chat/", json={"user_id": user, "text": "hello"})
                except httpx.TransportError:
                    self.connection_errors.append(started)  # chat restarting: no reply, so no record
                    await asyncio.sleep(0.05)
                    continue
                match = COUNT.search(response.text) if response.status_code == 200 else None
                self.replies.append(
                    Reply(started, self.now() - started, response.status_code, user, int(match.group(1)) if match else None)
                )
                await asyncio.sleep(self.think)

    async def _watch_breakers(self) -> None:
        last: dict[str, str] = {}
        async with httpx.AsyncClient(base_url=self.chat.url, timeout=2) as client:
            while self._running:
                try:
                    pipelines = (await client.get("/health/dependencies")).json()["analytics"]
                except (httpx.HTTPError, ValueError, KeyError):
                    await asyncio.sleep(0.1)
                    continue
                for name, view in pipelines.items():
                    if last.get(name) != view["breaker"]:
                        self.transitions.append({"t": round(self.now(), 2), "pipeline": name, "state": view["breaker"]})
                        last[name] = view["breaker"]
                await asyncio.sleep(0.1)

    async def _phase(self, name: str, seconds: float, *, fault: bool = False) -> None:
        phase = Phase(name, self.now(), fault=fault)
        self.phases.append(phase)
        await asyncio.sleep(seconds)
        phase.end = self.now()

    async def _script(self) -> None:
        t = self.timings
        await self._phase("baseline", t.baseline)
        self.analytics.kill()
        await self._phase("analytics_killed", t.down, fault=True)
        await asyncio.to_thread(self.analytics.start)
        self.returns["after_kill"] = self.now()
        await self._phase("recovery_after_kill", t.recovery)
        self.analytics.signal(signal.SIGSTOP)
        await self._phase("analytics_frozen", t.frozen, fault=True)
        self.analytics.signal(signal.SIGCONT)
        self.returns["after_freeze"] = self.now()
        await self._phase("recovery_after_freeze", t.recovery)
        phase = Phase("chat_restart", self.now(), fault=True)
        self.phases.append(phase)
        await asyncio.to_thread(self.chat.stop)
        await asyncio.to_thread(self.chat.start)
        phase.end = self.now()
        await self._phase("tail", t.tail)

    async def drive(self) -> None:
        tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        watcher = asyncio.create_task(self._watch_breakers())
        try:
            await self._script()
        finally:
            self._running = False
            await asyncio.gather(*tasks, watcher)

    def run(self) -> dict[str, object]:
        with self.analytics, self.chat:
            self.t0 = time.monotonic()
            asyncio.run(self.drive())
            drained = self._wait_drained()
            return self.report(drained)

    def _wait_drained(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.chat.url + "/health/dependencies", timeout=5).json()["outbox"]["depth"] == 0:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def _loss_check(self) -> dict[str, object]:
        expected: dict[str, int] = {}
        for reply in self.replies:
            if reply.status == 200:
                expected[reply.user] = expected.get(reply.user, 0) + 1
        lost = duplicated = 0
        mismatched: dict[str, list[int]] = {}
        with httpx.Client(base_url=self.analytics.url, timeout=10) as client:
            for user, want in expected.items():
                response = client.get(f"/analytics/{user}")
                have = response.json()["message_count"] if response.status_code == 200 else 0
                if have != want:
                    mismatched[user] = [want, have]
                    lost += max(0, want - have)
                    duplicated += max(0, have - want)
        return {
            "users": len(expected),
            "replies_200": sum(expected.values()),
            "lost": lost,
            "duplicated": duplicated,
            "mismatched": mismatched,
        }

    def _resumed_after(self, moment: float) -> float | None:
        later = sorted((r for r in self.replies if r.started >= moment and r.count), key=lambda r: r.started)
        return round(later[0].started - moment, 2) if later else None

    def report(self, drained: bool) -> dict[str, object]:
        phases = {}
        for phase in self.phases:
            inside = [r for r in self.replies if phase.start <= r.started < phase.end]
            latencies = [r.latency for r in inside]
            phases[phase.name] = {
                "start": round(phase.start, 2),
                "end": round(phase.end, 2),
                "fault": phase.fault,
                "requests": len(inside),
                "non_2xx": sum(1 for r in inside if r.status != 200),
                "zero_counts": sum(1 for r in inside if r.count == 0),
                "connection_errors": sum(1 for t in self.connection_errors if phase.start <= t < phase.end),
                "p50_ms": round(percentile(latencies, 0.5) * 1000, 1) if inside else None,
                "p95_ms": round(percentile(latencies, 0.95) * 1000, 1) if inside else None,
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if inside else None,
            }
        return {
            "timings": asdict(self.timings),
            "breaker_reset": self.breaker_reset,
            "workers": self.workers,
            "phases": phases,
            "breaker_transitions": self.transitions,
            "counts_resumed_after_s": {k: self._resumed_after(v) for k, v in self.returns.items()},
            "outbox_drained": drained,
            "loss_check": self._loss_check(),
            "total_requests": len(self.replies),
            "non_2xx": sum(1 for r in self.replies if r.status != 200),
        }


def chart(run: ChaosRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = int(max((r.started for r in run.replies), default=0)) + 1
    seconds = range(end)
    per_second: list[list[float]] = [[] for _ in seconds]
    for reply in run.replies:
        per_second[int(reply.started)].append(reply.latency * 1000)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6))
    top.plot(seconds, [len(s) for s in per_second], color="tab:blue")
    top.set_ylabel("replies / s")
    bottom.plot(seconds, [percentile(s, 0.5) if s else float("nan") for s in per_second], label="p50")
    bottom.plot(seconds, [percentile(s, 0.99) if s else float("nan") for s in per_second], label="p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds since start")
    bottom.legend()
    for phase in run.phases:
        if phase.fault:
            for axis in (top, bottom):
                axis.axvspan(phase.start, phase.end, color="tab:red", alpha=0.15)
            top.annotate(phase.name, (phase.start, 0), fontsize=8, rotation=90, va="bottom")
    fig.suptitle("Chat under chaos (shaded: faults)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_chaos(out: Path, timings: Timings, **options: object) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    run = ChaosRun(Path(tempfile.mkdtemp(prefix="chaos-")), timings, **options)  # type: ignore[arg-type]
    report = run.run()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    chart(run, out / "report.png")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/chaos"))
    for name, default in asdict(Timings()).items():
        parser.add_argument(f"--{name}", type=float, default=default, help=f"seconds (default {default})")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    timings = Timings(**{name: getattr(args, name) for name in asdict(Timings())})
    report = run_chaos(args.out, timings, workers=args.workers)
    print(json.dumps({k: report[k] for k in ("phases", "breaker_transitions", "counts_resumed_after_s", "loss_check")}, indent=1))
    print(f"report: {args.out}/report.json and report.png")
    loss = report["loss_check"]
    raise SystemExit(0 if report["non_2xx"] == 0 and not loss["lost"] and not loss["duplicated"] else 1)  # type: ignore[index]


if __name__ == "__main__":
    main()
