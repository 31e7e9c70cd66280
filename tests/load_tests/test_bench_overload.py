"""The overload benchmark's timeline: requests bucketed by when they were sent, not when answered."""

from __future__ import annotations

from load_tests.bench_overload import _timeline


def test_the_timeline_buckets_by_send_time_and_counts_what_is_neither_200_nor_503():
    requests = [
        [100.0, 0.010, 200],
        [100.2, 0.003, 503],
        [100.3, 0.900, 200],  # answered in the next half-second: still counted where it was sent
        [100.7, 0.020, 200],
        [100.8, 5.000, 0],  # a client timeout
        [101.6, 0.004, 503],
    ]
    rows = _timeline(requests)
    assert [row["t"] for row in rows] == [0.0, 0.5, 1.5], "empty half-seconds are left out"
    first, second, last = rows
    assert (first["ok_per_s"], first["ok_p50_ms"], first["refused_per_s"], first["refused_p50_ms"]) == (4, 900.0, 2, 3.0)
    assert (second["ok_per_s"], second["refused_per_s"], second["refused_p50_ms"], second["other_count"]) == (2, 0, None, 1)
    assert (last["ok_per_s"], last["ok_p50_ms"], last["refused_per_s"]) == (0, None, 2)
    assert _timeline([]) == []
