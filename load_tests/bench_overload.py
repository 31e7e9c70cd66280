"""Overload benchmark: chat driven open-loop at 3x its capacity, with and without admission control.

`flock /work/.bench.lock uv run python -m load_tests.bench_overload` starts analytics and, per
round, a fresh chat (offline model, uvloop, the production server flags), then:

1. measures the closed-loop capacity C (after a warm-up);
2. drives chat open-loop at `--factor` x C for `--seconds` with a `--timeout` client timeout
   (load_tests/openloop_raw.py, in its own process), and a closed loop in the first second after;
3. waits until chat stops working and its outbox has drained, then compares what analytics
   counted with the 200s the clients received.

Rounds alternate between admission on and off (`--modes`, which can also compare settings), so
every variant sees the same machine.
Prints one line per round and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .bench import rss_kib
from .loadgen import percentile
from .processes import ServiceProcess, chat_env, counted_messages, outbox_drained, seed_users, sqlite_analytics

_REQUESTS = re.compile(r'^http_requests_total\{method="POST",route="/chat/",status="\d+"\} ([0-9.e+]+)$', re.MULTILINE)


def _generate(url: str, *args: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "load.json"
        command = [sys.executable, "-m", "load_tests.openloop_raw", url, *args, "--out", str(out)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())  # type: ignore[no-any-return]


def _capacity(url: str, seconds: float, connections: int) -> float:
    result = _generate(url, "--seconds", str(seconds), "--connections", str(connections))
    return len(result["closed_ok"]) / seconds  # type: ignore[arg-type]


def _chat_requests_done(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(float(v) for v in _REQUESTS.findall(text))


_GAUGES = re.compile(
    r"^chat_(?:admission_|outbox_)?(in_flight|limit|queued|min_latency_seconds|event_loop_lag_seconds|writer_busy_seconds|depth)"
    r" ([0-9.e+-]+)$",
    re.MULTILINE,
)


def _trace(url: str, stop: threading.Event, out: list[dict[str, float]]) -> None:
    """Sample the admission and outbox gauges, and what was not run, twice a second while the load runs (`--trace`)."""
    started = time.monotonic()
    while not stop.wait(0.5):
        try:
            text = httpx.get(url + "/metrics", timeout=2).text
        except httpx.HTTPError:
            continue
        sample = {name: float(value) for name, value in _GAUGES.findall(text)}
        sample.update({f"not_run_{reason or 'cancelled'}": float(value) for _, reason, value in _SHED.findall(text)})
        out.append({"t": round(time.monotonic() - started, 1), **sample})


_SHED = re.compile(r'^chat_admission_(shed_total\{reason="(\w+)"\}|cancelled_total) ([0-9.e+]+)$', re.MULTILINE)


_CLOSED = re.compile(r'^chat_connections_closed_total\{reason="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


def _dropped(url: str) -> dict[str, int]:
    """What admission did not run, by reason (client_gone, queue_full, queue_timeout, read_late,
    cancelled), and the connections the guard closed (`closed_idle_evicted`, `closed_refused`, ...)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    dropped = {reason or "cancelled": int(float(value)) for _, reason, value in _SHED.findall(text)}
    return dropped | {f"closed_{reason}": int(float(value)) for reason, value in _CLOSED.findall(text)}


def _wait_until_idle(chat: ServiceProcess, timeout: float = 120.0) -> float:
    """Poll until chat's finished-request count has not moved for a second; returns when it last moved."""
    last, moved_at = -1.0, time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _chat_requests_done(chat.url)
        if done != last:
            last, moved_at = done, time.time()
        elif time.time() - moved_at >= 1.0:
            break
        time.sleep(0.25)
    return moved_at


def _wait_drained(chat: ServiceProcess) -> None:
    if not outbox_drained(chat.url, timeout=120.0):
        raise TimeoutError("the outbox did not drain")


def _stall(pid: int, after: float, seconds: float) -> None:
    """Stop the process `after` seconds from now for `seconds` (SIGSTOP, SIGCONT): a machine that
    takes its CPU away, or a long pause, while requests keep coming (`--stall`)."""
    time.sleep(after)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def _ms(latencies: list[float], q: float) -> float | None:
    return round(percentile(latencies, q) * 1000, 2) if latencies else None


def run_round(
    analytics: ServiceProcess, db: Path, work: Path, args: argparse.Namespace, *, mode: str, n: int
) -> dict[str, object]:
    switch, *settings = mode.split()
    admission = switch == "on"
    env = chat_env(
        analytics.url,
        work / f"outbox-{n}.sqlite3",
        CHAT_LOG_LEVEL="WARNING",
        CHAT_ADMISSION__ENABLED=str(admission).lower(),
        **dict(setting.split("=", 1) for setting in [*args.set, *settings]),
    )
    chat = ServiceProcess("chat_service.main:app", extra_args=("--loop", "uvloop"), log_path=work / f"chat-{n}.log", env=env)
    with chat:
        _capacity(chat.url, args.warmup, args.connections)
        capacity = _capacity(chat.url, args.capacity_seconds, args.connections)
        _wait_drained(chat)
        counted_before, rss_before, dropped_before = counted_messages(db), rss_kib(chat.pid), _dropped(chat.url)
        rate = args.rate or args.factor * capacity
        trace: list[dict[str, float]] = []
        stop = threading.Event()
        tracer = threading.Thread(target=_trace, args=(chat.url, stop, trace), daemon=True)
        if args.trace:
            tracer.start()
        staller = threading.Thread(target=_stall, args=(chat.pid, args.stall_at, args.stall), daemon=True)
        if args.stall:
            staller.start()
        result = _generate(
            chat.url, "--rate", str(rate), "--seconds", str(args.seconds), "--timeout", str(args.timeout),
            "--after", "1", "--connections", str(args.connections), "--user-prefix", "bench",
        )  # fmt: skip
        stopped_at = float(result["stopped_at"])  # type: ignore[arg-type]
        stop.set()
        if args.stall:
            staller.join()
        for sample in trace:
            print("  trace", json.dumps(sample), flush=True)
        idle_at = _wait_until_idle(chat)
        _wait_drained(chat)
        time.sleep(args.settle)
        rss_after = rss_kib(chat.pid)
        dropped = {k: v - dropped_before.get(k, 0) for k, v in _dropped(chat.url).items() if v - dropped_before.get(k, 0)}
        counted = counted_messages(db) - counted_before
    requests: list[list[float]] = result["requests"]  # type: ignore[assignment]
    ok = [latency for _, latency, status in requests if status == 200]
    refused = [latency for _, latency, status in requests if status == 503]
    statuses: dict[str, int] = {}
    for _, _, status in requests:
        statuses[str(int(status))] = statuses.get(str(int(status)), 0) + 1
    after_ok: int = result["after_ok"]  # type: ignore[assignment]
    received = len(ok) + after_ok
    return {
        "mode": mode,
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(rate, 1),
        "goodput_ratio": round(len(ok) / args.seconds / capacity, 3),
        "p50_200_ms": _ms(ok, 0.5),
        "p99_200_ms": _ms(ok, 0.99),
        "refused": len(refused),
        "refused_p50_ms": _ms(refused, 0.5),
        "refused_p99_ms": _ms(refused, 0.99),
        "refused_within_10ms": round(sum(1 for r in refused if r < 0.01) / len(refused), 3) if refused else None,
        "not_run": dropped,
        "statuses": statuses,  # 0: client timeout, -1: connection error, -2: no connection to spare
        "after_ratio": round(after_ok / capacity, 3),
        # From the end of the closed-loop second after the load (our own last requests).
        "work_after_load_s": round(max(0.0, idle_at - stopped_at - 1.0), 2),
        "oks_received": received,
        "analytics_counted": counted,
        "counted_without_200": counted - received,
        "rss_mib": [round(rss_before / 1024, 1), round(rss_after / 1024, 1)],
        "rss_ratio": round(rss_after / rss_before, 3),
        **({"timeline": _timeline(requests)} if args.timeline else {}),
    }


def _timeline(requests: list[list[float]], step: float = 0.5) -> list[dict[str, float | None]]:
    """Per `step` of the burst, by when requests were sent: 200s and 503s a second, and their p50s."""
    start = min((sent for sent, _, _ in requests), default=0.0)
    buckets: dict[int, list[list[float]]] = {}
    for request in requests:
        buckets.setdefault(int((request[0] - start) / step), []).append(request)
    rows = []
    for index in sorted(buckets):
        ok = [latency for _, latency, status in buckets[index] if status == 200]
        refused = [latency for _, latency, status in buckets[index] if status == 503]
        rows.append({
            "t": index * step,
            "ok_per_s": round(len(ok) / step),
            "ok_p50_ms": _ms(ok, 0.5),
            "refused_per_s": round(len(refused) / step),
            "refused_p50_ms": _ms(refused, 0.5),
            "other_count": len(buckets[index]) - len(ok) - len(refused),  # timeouts, errors, not sent
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of the capacity")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer this many requests a second instead of --factor x C: variants compared under the same load",
    )
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout, seconds")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections (capacity, after)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the drain before RSS is read")
    parser.add_argument(
        "--modes",
        default="on,off",
        help="rounds to alternate, comma-separated: 'on' or 'off' (admission), each optionally followed by "
        "space-separated chat settings, e.g. 'on,on CHAT_ADMISSION__QUEUE_TIMEOUT=0.05'",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="VAR=VALUE", help="chat setting for every round")
    parser.add_argument(
        "--trace", action="store_true", help="print the admission and outbox gauges, and what was not run, twice a second"
    )
    parser.add_argument("--timeline", action="store_true", help="add the 200s and 503s by the half-second they were sent in")
    parser.add_argument(
        "--stall",
        type=float,
        default=0.0,
        help="stop chat (SIGSTOP) this many seconds into the burst, then resume it: a machine that takes its CPU away",
    )
    parser.add_argument("--stall-at", type=float, default=1.0, help="seconds into the burst when --stall starts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    analytics, db = sqlite_analytics(work)
    rounds = []
    with analytics:
        seed_users(analytics.url, [f"bench{i}" for i in range(args.users)])
        modes = [mode.strip() for mode in args.modes.split(",")]
        for n in range(args.rounds * len(modes)):
            result = run_round(analytics, db, work, args, mode=modes[n % len(modes)], n=n)
            print(json.dumps(result), flush=True)
            rounds.append(result)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
