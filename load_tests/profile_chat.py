"""Where chat's CPU goes on the model path: chat under load, sampled by py-spy.

`uv run python -m load_tests.profile_chat` starts analytics, a fake model (`--think`, 200 ms) and
chat (as `load_tests.bench` does), loads chat with `--connections` concurrent chats, and prints
chat's CPU per chat. With `--py-spy FILE` it also records chat with py-spy for the measured
window (`--format raw`: folded stacks, one per line with its sample count, to read as text or
feed to a flame graph tool) and prints the top frames by inclusive time. Run it under
`flock /work/.bench.lock` like every benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import tempfile
from pathlib import Path

import httpx

from .bench import FAST, _ok, _request_factory, cpu_seconds
from .fake_model import fake_model_process
from .loadgen import LoadResult, run_load, summarize
from .processes import LOOP_FLAGS, ServiceProcess, analytics_env, chat_env


def top_frames(raw: Path, *, limit: int, needle: str = "") -> list[tuple[str, float]]:
    """Inclusive share of samples per frame (function and file) in a py-spy raw (folded) file."""
    totals: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples += int(count)
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0] + " " + frame.split("/")[-1].split(":")[0].rstrip(")")
            if name not in seen and needle in name:
                seen.add(name)
                totals[name] += int(count)
    return [(name, count / samples) for name, count in totals.most_common(limit)] if samples else []


def mean_latencies(metrics: str) -> dict[str, float]:
    """Mean milliseconds of chat's latency histograms (the whole run): where a chat's time goes."""
    sums: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, float] = collections.defaultdict(float)
    for line in metrics.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(("http_request_duration_seconds", "chat_llm_run_seconds", "chat_llm_call_seconds")):
            if '/chat/"' not in name and name.startswith("http_"):
                continue
            base = name.split("{")[0]
            if base.endswith("_sum"):
                sums[base[:-4]] += float(value)
            elif base.endswith("_count"):
                counts[base[:-6]] += float(value)
    return {name: round(sums[name] / counts[name] * 1000, 2) for name in counts if counts[name]}


async def measure(url: str, pid: int, args: argparse.Namespace) -> dict[str, object]:
    """Like `bench.measure`, plus the statuses, and CPU per 200 (a shed 503 costs far less than a chat)."""
    make = _request_factory(url.split("//")[1], args.users)
    await run_load(url, make, connections=args.connections, seconds=args.warmup, check=_ok)
    cpu_before = cpu_seconds(pid)
    result = await run_load(url, make, connections=args.connections, seconds=args.seconds, result=LoadResult())
    cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000
    summary: dict[str, object] = dict(summarize(result.samples, args.seconds))
    statuses = collections.Counter(sample.status for sample in result.samples)
    summary["statuses"] = dict(statuses)
    summary["cpu_ms_per_request"] = round(cpu_ms / max(1, len(result.samples)), 3)
    summary["cpu_ms_per_200"] = round(cpu_ms / max(1, statuses[200]), 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--think", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=1, help="measure this many times in a row")
    parser.add_argument("--py-spy", type=Path, help="record chat's stacks (raw format) here")
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--floor", action="store_true", help="profile the floor app (aiohttp) instead of chat")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for chat's environment (repeatable)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="profile-"))
    analytics = ServiceProcess(
        "analytics_service.main:app",
        extra_args=LOOP_FLAGS,  # our services run with their shipped server flags; the floor with FAST
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/analytics.sqlite3", ANALYTICS_LOG_LEVEL="WARNING"),
    )
    model = fake_model_process("model", think=args.think, log_path=work / "model.log", fast=True)
    with analytics, model:
        items = [{"user_id": f"bench{i}", "message_id": "seed", "timestamp": "2025-01-01T00:00:00Z"} for i in range(args.users)]
        httpx.post(analytics.url + "/messages/batch", json={"items": items}, timeout=30).raise_for_status()
        floor_env = {
            "ANALYTICS_URL": analytics.url,
            "FLOOR_TRANSPORT": "aiohttp",
            "FLOOR_MODEL_URL": model.url + "/v1",
            "FLOOR_MODEL_CLIENT": "aiohttp",
        }
        floor = ServiceProcess("load_tests.floor_app:app", extra_args=FAST, log_path=work / "floor.log", env=floor_env)
        chat = (
            floor
            if args.floor
            else ServiceProcess(
                "chat_service.main:app",
                extra_args=LOOP_FLAGS,
                log_path=work / "chat.log",
                env=chat_env(
                    analytics.url,
                    work / "outbox.sqlite3",
                    CHAT_LOG_LEVEL="WARNING",
                    model_url=model.url,
                    CHAT_LLM_MAX_CONCURRENCY=str(max(args.connections, 16)),
                    **dict(item.split("=", 1) for item in args.env),
                ),
            )
        )
        with chat:
            spy = None
            for round_ in range(args.rounds):
                if args.py_spy and round_ == args.rounds - 1:
                    duration = str(int(args.seconds + args.warmup))
                    command = ["py-spy", "record", "--pid", str(chat.pid), "--format", "raw", "-o", str(args.py_spy)]
                    spy = subprocess.Popen(
                        [*command, "--duration", duration, "--rate", "250", "--nonblocking"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                print(asyncio.run(measure(chat.url, chat.pid, args)), flush=True)
            if spy is not None:
                spy.wait(60)
            if not args.floor:
                print(mean_latencies(httpx.get(chat.url + "/metrics", timeout=10).text), flush=True)
    if args.py_spy:
        for name, share in top_frames(args.py_spy, limit=args.top):
            print(f"{share * 100:6.1f}%  {name}")


if __name__ == "__main__":
    main()
