"""Chaos run: steady chat load while analytics is killed, frozen, and chat itself restarted.

`uv run python -m load_tests.chaos --out reports/chaos` starts analytics and chat as real
processes and drives closed-loop load. Timeline: baseline -> SIGKILL analytics (down a while,
then restarted) -> SIGSTOP analytics (then SIGCONT) -> SIGTERM chat and start it again ->
tail. It then waits for chat's outbox to drain and checks that every user's analytics count
equals the number of 200 replies that user got. It writes `report.json` and `report.png`.

Conversations are on (chat's default SQLite store, kept across chat's restart): each user talks
in a few sessions, each session owned by one worker (one message at a time, so a 409 would be a
bug), and the run ends by reading every conversation back: each stored turn must be one of our
messages followed by its reply, in the order they were answered, one per 200 reply, and each
reply must say it is "message N of this conversation" with N its place in the session.

The phases tile the whole run (analytics' restart is a phase of its own), so every reply is in
one phase's figures. The chart puts each reply in the second it was answered, drawn at the
middle of that second, beside the read pipeline's fallbacks per second (sampled from chat's
`/metrics`) and both breakers' states.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
TURN = re.compile(r"This is message (\d+) of this conversation")
READ_FALLBACKS = re.compile(r'^chat_analytics_fallbacks_total\{[^}]*target="analytics-read"[^}]*\} (\S+)$', re.MULTILINE)
BREAKER_LEVELS = {"closed": 0, "half-open": 1, "open": 2}


@dataclass
class Reply:
    started: float
    latency: float
    status: int
    user: str
    count: int | None
    session: str = ""
    text: str = ""
    reply: str = ""
    turn: int | None = None  # "message N of this conversation"


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
    sessions: int = 3  # per user
    think: float = 0.02
    breaker_reset: float = 2.0
    sessions_url: str | None = None  # the conversation store; None: chat's default SQLite file
    replies: list[Reply] = field(default_factory=list)
    connection_errors: list[float] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    transitions: list[dict[str, object]] = field(default_factory=list)
    returns: dict[str, float] = field(default_factory=dict)
    fallback_samples: list[tuple[float, float]] = field(default_factory=list)  # (t, read fallbacks counted so far)
    restart: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefix = f"chaos-{uuid.uuid4().hex[:6]}"
        self.t0 = time.monotonic()
        self.analytics = ServiceProcess(
            "analytics_service.main:app",
            log_path=self.work / "analytics.log",
            env=analytics_env(f"sqlite:///{self.work}/analytics.sqlite3"),
        )
        reset = str(self.breaker_reset)
        store = {} if self.sessions_url is None else {"CHAT_SESSIONS_URL": self.sessions_url}
        self.chat = ServiceProcess(
            "chat_service.main:app",
            log_path=self.work / "chat.log",
            env=chat_env(
                self.analytics.url,
                self.work / "outbox.sqlite3",
                CHAT_ANALYTICS_READ__BREAKER_RESET=reset,
                CHAT_ANALYTICS_RECORD__BREAKER_RESET=reset,
                CHAT_SESSION_MAX_ITEMS="10000",  # every turn of the run stays, for the check
                # The store is not a fault here, and a store call that times out costs its turn's
                # history by design (docs/conversations.md). At 0.5 s, a 0.64 s PostgreSQL stall on
                # a CPU-starved 2-core machine opened the store's breaker for 5 s in a CI run: every
                # conversation lost those turns. A generous margin, as for any latency in chaos.
                CHAT_SESSION_TIMEOUT="3",
                **store,
            ),
        )
        self._running = True

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _worker(self, index: int) -> None:
        # This worker's conversations: (user, session) pairs no other worker talks in.
        mine = [p for p in range(self.users * self.sessions) if p % self.workers == index]
        sent = dict.fromkeys(mine, 0)
        async with httpx.AsyncClient(base_url=self.chat.url, timeout=30) as client:
            for pair in itertools.cycle(mine):
                if not self._running:
                    break
                user, session = f"{self.prefix}-{pair % self.users}", f"c{pair // self.users}"
                sent[pair] += 1
                text = f"hello {sent[pair]}"
                body = {"user_id": user, "text": text, "metadata": {"session_id": session}}
                started = self.now()
                try:
                    response = await client.post("/chat/", json=body)
                except httpx.TransportError:
                    self.connection_errors.append(started)  # chat restarting: no reply, so no record
                    await asyncio.sleep(0.05)
                    continue
                ok = response.status_code == 200
                reply = response.json()["reply"] if ok else ""
                match, turn = COUNT.search(reply), TURN.search(reply)
                self.replies.append(
                    Reply(
                        started,
                        self.now() - started,
                        response.status_code,
                        user,
                        int(match.group(1)) if match else None,
                        session,
                        text,
                        reply,
                        int(turn.group(1)) if turn else None,
                    )
                )
                await asyncio.sleep(self.think)

    async def _watch_breakers(self) -> None:
        last: dict[str, str] = {}
        ticks = 0
        async with httpx.AsyncClient(base_url=self.chat.url, timeout=2) as client:
            while self._running:
                ticks += 1
                try:
                    pipelines = (await client.get("/health/dependencies")).json()["analytics"]
                    if ticks % 3 == 0:  # fallbacks every 0.3 s: a scrape costs chat more than a health read
                        self._sample_fallbacks((await client.get("/metrics")).text)
                except (httpx.HTTPError, ValueError, KeyError):
                    await asyncio.sleep(0.1)
                    continue
                for name, view in pipelines.items():
                    if last.get(name) != view["breaker"]:
                        self.transitions.append({"t": round(self.now(), 2), "pipeline": name, "state": view["breaker"]})
                        last[name] = view["breaker"]
                await asyncio.sleep(0.1)

    def _sample_fallbacks(self, metrics: str) -> None:
        self.fallback_samples.append((self.now(), sum(float(value) for value in READ_FALLBACKS.findall(metrics))))

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
        starting = Phase("analytics_restarting", self.now(), fault=True)  # still away until it answers
        self.phases.append(starting)
        await asyncio.to_thread(self.analytics.start)
        starting.end = self.returns["after_kill"] = self.now()
        await self._phase("recovery_after_kill", t.recovery)
        self.analytics.signal(signal.SIGSTOP)
        await self._phase("analytics_frozen", t.frozen, fault=True)
        self.analytics.signal(signal.SIGCONT)
        self.returns["after_freeze"] = self.now()
        await self._phase("recovery_after_freeze", t.recovery)
        phase = Phase("chat_restart", self.now(), fault=True)
        self.phases.append(phase)
        await asyncio.to_thread(self.chat.stop)
        stopped = self.now()
        await asyncio.to_thread(self.chat.start)
        phase.end = self.now()
        self.restart = {"sigterm": phase.start, "exited": stopped, "ready": phase.end}
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

    def _conversation_check(self) -> dict[str, object]:
        """Every conversation read back: one stored turn per 200 reply, in order, none half-written."""
        answered: dict[tuple[str, str], list[Reply]] = {}
        for reply in sorted(self.replies, key=lambda r: r.started):
            if reply.status == 200:
                answered.setdefault((reply.user, reply.session), []).append(reply)
        half_written = interleaved = missing = extra = memory_wrong = 0
        wrong: dict[str, object] = {}
        with httpx.Client(base_url=self.chat.url, timeout=10) as client:
            for (user, session), replies in answered.items():
                response = client.get(f"/sessions/{session}", params={"user_id": user})
                turns = response.json()["turns"] if response.status_code == 200 else []
                half_written += sum(1 for turn in turns if not turn["reply"])
                stored = [(turn["text"], turn["reply"]) for turn in turns]
                given = [(reply.text, reply.reply) for reply in replies]
                missing += max(0, len(given) - len(stored))
                extra += max(0, len(stored) - len(given))
                if stored[: len(given)] != given[: len(stored)]:
                    interleaved += 1
                memory_wrong += sum(1 for place, reply in enumerate(replies, 1) if reply.turn != place)
                if stored != given or any(reply.turn != place for place, reply in enumerate(replies, 1)):
                    wrong[f"{user}/{session}"] = {"stored": stored, "answered": [(r.text, r.turn) for r in replies]}
        return {
            "sessions": len(answered),
            "turns_200": sum(len(replies) for replies in answered.values()),
            "most_turns": max((len(replies) for replies in answered.values()), default=0),
            "half_written": half_written,
            "interleaved": interleaved,
            "missing_turns": missing,
            "extra_turns": extra,
            "memory_wrong": memory_wrong,
            "wrong": dict(list(wrong.items())[:5]),
        }

    def _resumed_after(self, moment: float) -> float | None:
        later = sorted((r for r in self.replies if r.started >= moment and r.count), key=lambda r: r.started)
        return round(later[0].started - moment, 2) if later else None

    def _fallbacks_between(self, start: float, end: float) -> int:
        """Read fallbacks counted by chat in [start, end), from the samples (a restarted chat counts from 0)."""
        total, previous = 0.0, 0.0
        for t, value in self.fallback_samples:
            step = value - previous if value >= previous else value
            previous = value
            if start <= t < end:
                total += step
        return round(total)

    def _restart_report(self) -> dict[str, float | int | None]:
        """What a chat restart costs a single instance: shutdown (drain, outbox flush), start-up, and
        the time no connection got through (from the first refused one to the next 200)."""
        if not self.restart:
            return {}
        sigterm, exited, ready = self.restart["sigterm"], self.restart["exited"], self.restart["ready"]
        refused = sorted(t for t in self.connection_errors if t >= sigterm)
        first_refused = refused[0] if refused else None
        answered = sorted(
            r.started for r in self.replies if first_refused is not None and r.started >= first_refused and r.status == 200
        )
        return {
            "shutdown_s": round(exited - sigterm, 2),
            "startup_s": round(ready - exited, 2),
            "unreachable_s": round(answered[0] - first_refused, 2) if first_refused is not None and answered else None,
            "connection_errors": len(refused),
        }

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
                "read_fallbacks": self._fallbacks_between(phase.start, phase.end),
                "p50_ms": round(percentile(latencies, 0.5) * 1000, 1) if inside else None,
                "p95_ms": round(percentile(latencies, 0.95) * 1000, 1) if inside else None,
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if inside else None,
            }
        return {
            "timings": asdict(self.timings),
            "breaker_reset": self.breaker_reset,
            "workers": self.workers,
            "phases": phases,
            "unphased_requests": sum(1 for r in self.replies if not any(p.start <= r.started < p.end for p in self.phases)),
            "chat_restart": self._restart_report(),
            "breaker_transitions": self.transitions,
            "counts_resumed_after_s": {k: self._resumed_after(v) for k, v in self.returns.items()},
            "outbox_drained": drained,
            "loss_check": self._loss_check(),
            "conversation_check": self._conversation_check(),
            "total_requests": len(self.replies),
            "non_2xx": sum(1 for r in self.replies if r.status != 200),
        }


def by_answer_second(replies: list[Reply]) -> list[list[float]]:
    """Latencies (ms) by the second each reply was answered in: a slow reply counts where it ended,
    so a fault's latency spike falls inside the fault's shading, never before it."""
    end = int(max((r.started + r.latency for r in replies), default=0)) + 1
    seconds: list[list[float]] = [[] for _ in range(end)]
    for reply in replies:
        seconds[int(reply.started + reply.latency)].append(reply.latency * 1000)
    return seconds


def fallbacks_per_second(samples: list[tuple[float, float]], seconds: int) -> list[float]:
    """Read fallbacks per second from cumulative samples (a restarted chat counts from 0 again)."""
    rate = [0.0] * seconds
    previous_t, previous = 0.0, 0.0
    for t, value in samples:
        step = value - previous if value >= previous else value
        if step and t > previous_t:  # spread the step over the time since the last sample
            for second in range(int(previous_t), min(int(t) + 1, seconds)):
                overlap = min(t, second + 1) - max(previous_t, second)
                if overlap > 0:
                    rate[second] += step * overlap / (t - previous_t)
        previous_t, previous = t, value
    return rate


def chart(run: ChaosRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_second = by_answer_second(run.replies)
    middles = [second + 0.5 for second in range(len(per_second))]  # a bucket is drawn at its middle
    fig, (replies, latency, fallbacks, breakers) = plt.subplots(
        4, 1, sharex=True, figsize=(11, 8.5), gridspec_kw={"height_ratios": [2, 2, 1.4, 1]}
    )
    replies.plot(middles, [len(s) for s in per_second], color="tab:blue")
    replies.set_ylabel("replies / s")
    latency.plot(middles, [percentile(s, 0.5) if s else float("nan") for s in per_second], label="p50")
    latency.plot(middles, [percentile(s, 0.99) if s else float("nan") for s in per_second], label="p99")
    latency.set_ylabel("latency (ms)")
    latency.legend(loc="upper left")
    fallbacks.plot(middles, fallbacks_per_second(run.fallback_samples, len(per_second)), color="tab:orange")
    fallbacks.set_ylabel("read fallbacks / s")
    for offset, pipeline in ((0.0, "read"), (0.08, "record")):
        changes = [(0.0, 0)] + [
            (float(str(t["t"])), BREAKER_LEVELS[str(t["state"])]) for t in run.transitions if t["pipeline"] == pipeline
        ]
        breakers.step(
            [t for t, _ in changes] + [len(per_second)],
            [level + offset for _, level in changes] + [changes[-1][1] + offset],
            where="post",
            label=pipeline,
        )
    breakers.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
    breakers.set_ylabel("breaker")
    breakers.legend(loc="upper left")
    breakers.set_xlabel("seconds since start (replies counted in the second they were answered)")
    for phase in run.phases:
        if phase.fault:
            for axis in (replies, latency, fallbacks, breakers):
                axis.axvspan(phase.start, phase.end, color="tab:red", alpha=0.15)
            replies.annotate(phase.name, (phase.start, 0), fontsize=8, rotation=90, va="bottom")
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
    shown = (
        "phases",
        "breaker_transitions",
        "counts_resumed_after_s",
        "chat_restart",
        "unphased_requests",
        "loss_check",
        "conversation_check",
    )
    print(json.dumps({k: report[k] for k in shown}, indent=1))
    print(f"report: {args.out}/report.json and report.png")
    loss, talks = report["loss_check"], report["conversation_check"]
    broken = any(talks[k] for k in ("half_written", "interleaved", "missing_turns", "extra_turns", "memory_wrong"))  # type: ignore[index]
    raise SystemExit(0 if report["non_2xx"] == 0 and not loss["lost"] and not loss["duplicated"] and not broken else 1)  # type: ignore[index]


if __name__ == "__main__":
    main()
