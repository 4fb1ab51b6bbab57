"""Logging set up while sys.stderr is swapped (a test's capture, a redirect)
keeps working once that stream is closed: lines go to the current stderr."""

from __future__ import annotations

import io
import json
import sys

import pytest

from dpkid.daemon.logs import get_logger, setup_logging


def test_lines_follow_the_current_stderr_not_the_one_at_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("info", "json")
    get_logger(node="n").info("one")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger(node="n").info("two", height=3)  # raised "I/O operation on closed file" before
    line = json.loads(second.getvalue().strip().splitlines()[-1])
    assert line["event"] == "two" and line["height"] == 3 and line["node"] == "n"
