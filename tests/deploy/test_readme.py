"""The README stays a short entry point: it links every docs page, and its test command is CI's."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TEST_COMMAND = "uv run ruff check && uv run mypy && uv run pytest"


@pytest.mark.parametrize("page", sorted(path.name for path in (ROOT / "docs").glob("*.md")))
def test_the_readme_links_every_docs_page(page):
    assert f"](docs/{page}" in README, f"README.md does not link docs/{page} (add it under 'Where to read more')"


def test_the_readme_shows_the_command_ci_runs():
    assert TEST_COMMAND in README
    ci_commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert TEST_COMMAND in ci_commands


def test_the_readme_stays_short():
    # Long sections belong in docs/ pages (issue 13): the README is what, quick start, API, settings, tests, links.
    assert len(README.splitlines()) <= 170
