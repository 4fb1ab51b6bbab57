"""Structured logs (structlog): JSON lines by default, human output on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _CurrentStderr:
    """``sys.stderr`` as it is when a line is written, not as it was when logging
    was set up: a caller that swaps it (a test's capture, later closed) must not
    leave every later log line writing to a closed file."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def setup_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or _CurrentStderr()
    lvl = LEVELS.get(level.lower())
    if lvl is None:
        raise ValueError(f"log level must be one of {sorted(LEVELS)}")
    console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the stdlib; route them to the same stream, quieter.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("libp2p", "dpkid.p2p", "multiaddr"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(max(lvl, logging.WARNING) if name != "dpkid.p2p" else lvl)
        lg.propagate = False


def get_logger(**ctx: Any) -> Any:
    return structlog.get_logger().bind(**ctx)


def quiet_libp2p(level: int = logging.WARNING) -> None:
    """Some libp2p modules set their own logger levels (INFO) on import: raise
    every libp2p logger to at least ``level`` once they are all imported."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("libp2p"):
            lg = logging.getLogger(name)
            if lg.level == logging.NOTSET or lg.level < level:
                lg.setLevel(level)
