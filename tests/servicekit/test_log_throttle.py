"""servicekit.logging.Throttle: one line per event every few seconds, with how many were left out."""

from __future__ import annotations

from servicekit.logging import Throttle


def test_one_line_per_key_per_interval_and_the_count_left_out():
    now = [100.0]
    throttle = Throttle(5.0, clock=lambda: now[0])
    assert throttle.allow("disk_full") == 0, "the first line of a kind always goes out"
    assert [throttle.allow("disk_full") for _ in range(3)] == [None, None, None]
    assert throttle.allow("stalled") == 0, "each kind has its own interval"
    now[0] += 4.9
    assert throttle.allow("disk_full") is None
    now[0] += 0.1
    assert throttle.allow("disk_full") == 4, "the next line says how many were held back"
    now[0] += 60
    assert throttle.allow("disk_full") == 0
