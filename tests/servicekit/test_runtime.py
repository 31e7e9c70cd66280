"""Start-up GC tuning: startup objects frozen, young garbage collected less often, the override checked."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from servicekit.runtime import GC_YOUNG_THRESHOLD, freeze_startup_objects


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_startup_objects_are_frozen_and_young_garbage_waits_for_the_tuned_threshold(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SERVICEKIT_GC_YOUNG_THRESHOLD", raising=False)
    middle, old = gc.get_threshold()[1:]
    freeze_startup_objects()
    assert gc.get_freeze_count() > 1000  # this very test process's modules, at least
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, old)


@pytest.mark.parametrize(("given", "expected"), [("5000", 5000), ("0", 0)])
def test_the_threshold_can_be_overridden(monkeypatch: pytest.MonkeyPatch, given: str, expected: int):
    monkeypatch.setenv("SERVICEKIT_GC_YOUNG_THRESHOLD", given)
    freeze_startup_objects()
    assert gc.get_threshold()[0] == expected


@pytest.mark.parametrize("given", ["lots", "-1", "2.5"])
def test_a_nonsensical_threshold_stops_start_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch, given: str):
    monkeypatch.setenv("SERVICEKIT_GC_YOUNG_THRESHOLD", given)
    with pytest.raises(ValueError, match="SERVICEKIT_GC_YOUNG_THRESHOLD must be a whole number"):
        freeze_startup_objects()
