"""What the dev DNS and HTTP servers share: a thread-safe table loaded whole
from a JSON file, atomic JSON files, reloading one when it changes, the
start/stop/``with`` life of a loopback server, and running one as a process
until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

E = TypeVar("E")


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


class JsonTable(ABC, Generic[E]):
    """Entries by normalized name (zone names, hosts), loaded whole from a JSON
    object of objects and shown as one; safe to read and change from any thread.

    A subclass names its file (the class variables) and says how a name is
    normalized and how one entry is made, read from JSON and shown as JSON."""

    error: ClassVar[type[Exception]]  # what bad input raises
    shape: ClassVar[str]  # the complaint when the file is not an object of names
    kind: ClassVar[str]  # "zone": the server's file option; "kept the previous zone"
    noun: ClassVar[str]  # "names": what "loaded PATH: N names" counts
    keys: ClassVar[frozenset[str]]  # the keys an entry may have

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, E] = {}
        if data:
            self.replace(data)

    @staticmethod
    @abstractmethod
    def norm(name: str, /) -> str: ...

    @abstractmethod
    def _new_entry(self) -> E: ...

    @classmethod
    @abstractmethod
    def _parse_entry(cls, name: str, spec: Mapping[str, Any]) -> E: ...

    @abstractmethod
    def _entry_json(self, entry: E) -> dict[str, Any]: ...

    # ---------------------------------------------------------------- edits
    def remove(self, name: str) -> None:
        with self._lock:
            self._entries.pop(self.norm(name), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def replace(self, data: Mapping[str, Any]) -> None:
        """Swap in a whole table (the JSON form) at once; invalid input changes nothing."""
        new = self.parse(data)
        with self._lock:
            self._entries = new

    def _entry(self, name: str) -> E:
        """The entry for ``name``, made empty if new; the caller holds the lock."""
        n = self.norm(name)
        e = self._entries.get(n)
        if e is None:
            e = self._entries[n] = self._new_entry()
        return e

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> dict[str, E]:
        if not isinstance(data, Mapping):
            raise cls.error(cls.shape)
        out: dict[str, E] = {}
        for name, spec in data.items():
            if not isinstance(spec, Mapping):
                raise cls.error(f"{name}: expected an object")
            unknown = set(spec) - cls.keys
            if unknown:
                raise cls.error(f"{name}: unknown keys {sorted(unknown)}")
            entry = cls._parse_entry(name, spec)
            out[cls.norm(str(name))] = entry
        return out

    # ---------------------------------------------------------------- reads
    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {n: self._entry_json(e) for n, e in sorted(self._entries.items())}

    # ---------------------------------------------------------------- files
    @classmethod
    def write_file(cls, path: Path, data: Mapping[str, Any]) -> None:
        """Write the file atomically, refusing what the server would refuse to load."""
        cls.parse(data)
        write_json_atomic(path, data)

    @classmethod
    def read_file(cls, path: Path) -> dict[str, Any]:
        return read_json_object(path, cls.error, cls.shape)

    def watch_file(
        self, path: Path, stop: threading.Event, interval_s: float = 0.1
    ) -> Iterator[str]:
        """Reload from ``path`` whenever the file changes; yields a message per reload."""

        def load() -> str:
            self.replace(self.read_file(path))
            return f"loaded {path}: {len(self.to_json())} {self.noun}"

        return watch_json_file(path, stop, load, self.error, self.kind, interval_s)


class LoopbackServer(ABC):
    """A dev server on ``host:port``: ``start`` it and ``stop`` it, or use ``with``."""

    host: str
    port: int

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    # The `python -m dpkid.dev.<module>` command: its one switch beside --host,
    # --port and the file (flag, help), described by the module docstring's first line.
    cli_switch: ClassVar[tuple[str, str]]

    @classmethod
    @abstractmethod
    def from_cli(cls, table: Any, host: str, port: int, switch: bool) -> Self:
        """The (unstarted) server for ``table``, configured from the command line."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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


def serve_file_main(
    argv: list[str] | None, server: type[LoopbackServer], table: JsonTable[Any]
) -> int:
    """``python -m dpkid.dev.<module>``: serve ``table`` on loopback, loaded from
    the file given as ``--<table.kind>`` and reloaded whenever it changes."""
    module = sys.modules[server.__module__]
    spec = module.__spec__  # under `python -m`, __module__ is "__main__"
    name = (spec.name if spec else server.__module__).rsplit(".", 1)[-1]
    description = (module.__doc__ or name).splitlines()[0]
    ap = argparse.ArgumentParser(prog=f"python -m dpkid.dev.{name}", description=description)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    ap.add_argument(
        f"--{table.kind}", required=True, help=f"JSON {table.kind} file, re-read when it changes"
    )
    flag, flag_help = server.cli_switch
    ap.add_argument(flag, dest="switch", action="store_true", help=flag_help)
    args = ap.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        print(f"{name}: refusing to listen outside loopback", file=sys.stderr)
        return 2
    path = Path(getattr(args, table.kind))
    if path.exists():
        try:
            table.replace(table.read_file(path))
        except table.error as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
    running = server.from_cli(table, args.host, args.port, args.switch).start()
    print(f"listening {running.host}:{running.port}", flush=True)
    run_until_signal(lambda stop: table.watch_file(path, stop), running.stop)
    return 0
