"""Log lines reach stdout whole: workers share it, so a line and its newline must be one write."""

from __future__ import annotations

import io
import json
import logging
import sys

import structlog

from servicekit.logging import configure_logging, get_logger


class _Writes(io.StringIO):
    """A stdout that remembers each write() call: what another process sharing the file could split."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_every_line_is_one_write_ending_in_a_newline(monkeypatch):
    stdout = _Writes()
    monkeypatch.setattr(sys, "stdout", stdout)
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(fmt="json")
        get_logger("test").info("structlog_line", user_id="alice")
        logging.getLogger("uvicorn.error").warning("a stdlib line")
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger("test").exception("with_a_traceback")
    finally:
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, level
    lines = [write for write in stdout.writes if write]
    assert len(lines) == 3, stdout.writes
    for line in lines:
        assert line.endswith("\n") and line.count("\n") == 1, line
        json.loads(line)
    assert [json.loads(line)["event"] for line in lines] == ["structlog_line", "a stdlib line", "with_a_traceback"]
