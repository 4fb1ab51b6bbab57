"""What the dev DNS and HTTP servers share: atomic JSON files, reloading one
when it changes, and running until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """A reader never sees half a file: write aside, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json_object(path: Path, error: type[Exception], what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {what}")
    return data


def _file_sig(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def watch_json_file(
    path: Path,
    stop: threading.Event,
    load: Callable[[], str],
    error: type[Exception],
    kept: str,
    interval_s: float = 0.1,
) -> Iterator[str]:
    """Call ``load`` whenever ``path`` changes; yield what it reports, or why
    the previous contents were kept (``kept`` names them)."""
    seen: tuple[int, int] | None = None
    while not stop.is_set():
        sig = _file_sig(path)
        if sig is not None and sig != seen:
            seen = sig
            try:
                yield load()
            except error as exc:
                yield f"kept the previous {kept}: {exc}"
        stop.wait(interval_s)


def run_until_signal(
    watch: Callable[[threading.Event], Iterator[str]], stop_server: Callable[[], None]
) -> None:
    """Print the watcher's messages until SIGINT/SIGTERM, then stop the server."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for msg in watch(stop):
            print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)
    finally:
        stop_server()
