"""The chaos chart's arithmetic: replies in the second they were answered, fallbacks per second."""

from __future__ import annotations

import pytest

from load_tests.chaos import Reply, by_answer_second, fallbacks_per_second


def test_a_slow_reply_counts_in_the_second_it_was_answered():
    replies = [Reply(started=2.9, latency=0.5, status=200, user="u", count=1), Reply(0.1, 0.01, 200, "u", 1)]
    seconds = by_answer_second(replies)
    assert len(seconds) == 4
    assert seconds[0] == [10.0] and seconds[2] == [] and seconds[3] == [500.0]


def test_fallbacks_per_second_spread_each_step_and_survive_a_restart():
    samples = [(1.0, 0.0), (2.0, 10.0), (3.0, 10.0), (3.5, 2.0)]  # chat restarted between 3.0 and 3.5: counts from 0
    rate = fallbacks_per_second(samples, 4)
    assert rate[0] == 0.0
    assert rate[1] == pytest.approx(10.0)
    assert rate[2] == 0.0
    assert rate[3] == pytest.approx(2.0)
