"""Prometheus metrics kept in a registry per app, so tests and workers never share globals.

Under `uvicorn --workers N`, set `PROMETHEUS_MULTIPROC_DIR` to an empty directory before the
workers start (see docs/operations.md): every worker then writes its values to files there
(prometheus_client's multiprocess mode) and `/metrics`, whichever worker answers it, reports
all of them. Without it, each app reports its own registry, as in a single process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

__all__ = ["LATENCY_BUCKETS", "GaugeMode", "HttpMetrics", "exposition", "gauge", "multiprocess_dir"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GaugeMode = Literal["livesum", "livemax", "livemin", "liveall", "livemostrecent"]
"""How a gauge's per-worker values combine in `/metrics` (only the live workers' values count):
`livesum` adds them (in-flight work), `livemax`/`livemin` keep one extreme, `liveall` keeps
one series per worker with a `pid` label (per-process state, such as a breaker), and
`livemostrecent` keeps the last value set by any worker (a shared resource each reads)."""

# gauge_livesum_1234.db: the live modes' files, the ones a dead worker must not leave behind.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def gauge(
    name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry, mode: GaugeMode
) -> Gauge:
    """A Gauge that says how its workers' values combine; every gauge in the services uses this.

    prometheus_client's own default (`all`, kept forever for every pid that ever lived) would
    report dead workers' values; the mode is required so that each gauge chooses.
    """
    return Gauge(name, documentation, labelnames, registry=registry, multiprocess_mode=mode)


def multiprocess_dir() -> str | None:
    """The directory workers share their values in, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(registry: CollectorRegistry) -> bytes:
    """The `/metrics` body: this app's registry, or every worker's values in multiprocess mode."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(registry)
    _forget_dead_workers(directory)
    everyone = CollectorRegistry()
    multiprocess.MultiProcessCollector(everyone, path=directory)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    return generate_latest(everyone)


def _forget_dead_workers(directory: str) -> None:
    """Drop the live-mode gauge files of processes that are gone, however they ended.

    uvicorn has no hook when a worker dies (gunicorn's `child_exit` is where prometheus_client
    suggests calling `mark_process_dead`), so the scrape does it. Counter and histogram files
    stay: a dead worker's requests still count in the totals.
    """
    pids = {int(match.group(1)) for path in Path(directory).iterdir() if (match := _LIVE_GAUGE_FILE.fullmatch(path.name))}
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # untyped in prometheus_client


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class HttpMetrics:
    """Request counts and latency by route template and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("http_requests_total", "HTTP requests served", ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
