"""The terminal of ``memories book`` and ``memories run``: what a chapter's kernel is doing, while it does it.

:func:`chapter_progress` opens the channel of ``core.progress`` (a UDP socket on 127.0.0.1), puts
its address in ``MEMORIES_PROGRESS`` for the kernel papermill is about to start (a kernel inherits
the parent's environment), and reads it in a thread until the chapter ends. What arrives is shown
by a :class:`Display`, each line prefixed with the chapter's name:

- on a TTY, the open loops share one line rewritten in place (``\\r``): ``[04_concept_memory] cells
  7/22 00:41 | uce/cross: E 96/150 00:41 2.3 it/s``;
- elsewhere (a CI log), each loop prints a plain line at most every :data:`PLAIN_EVERY` seconds;
- in both, a note is a line of its own, and a loop that ends gets a final line if it printed one
  before or if tqdm would leave it on screen (``leave``) and it took at least :data:`MIN_FINAL` s.

Papermill's own cell bar is drawn into the display (the loop ``cells``) instead of over its line.
Nothing of this reaches the notebook: the kernel sends, the parent prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TextIO

from tqdm.std import tqdm as std_tqdm

from ..core.parallel import child_environ
from ..core.progress import ENV

#: Seconds between two plain lines of one loop when the terminal is not a TTY.
PLAIN_EVERY = 10.0
#: A loop left on screen (``leave``) gets a final line when it took at least this long.
MIN_FINAL = 1.0
#: Seconds between two redraws (TTY) or checks for plain lines when nothing arrives.
TICK = 0.5


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def _rate(rate: float, unit: str) -> str:
    if rate < 1:
        return f"{1 / rate:.1f} s/{unit}"
    return f"{rate:.1f} {unit}/s" if rate < 100 else f"{rate:.0f} {unit}/s"


def describe(record: Mapping[str, Any], elapsed: float | None = None) -> str:
    """``DESC N/TOTAL ELAPSED RATE, POSTFIX`` of a loop's record (``elapsed`` instead of the record's)."""
    n, total = record["n"], record.get("total")
    seconds = (record.get("elapsed") or 0.0) if elapsed is None else elapsed
    parts = [
        record.get("desc") or "",
        f"{_number(n)}/{_number(total)}" if total is not None else _number(n),
        std_tqdm.format_interval(seconds),
        _rate(record["rate"], record.get("unit") or "it") if record.get("rate") else "",
    ]
    text = " ".join(part for part in parts if part)
    return f"{text}, {record['postfix']}" if record.get("postfix") else text


@dataclass
class _Loop:
    record: Mapping[str, Any]
    received: float   # when its latest record came
    last_line: float  # when it last printed a plain line (when it started, before its first)
    printed: bool = False

    def elapsed(self, now: float) -> float:
        return (self.record.get("elapsed") or 0.0) + now - self.received


class Display:
    """Shows a chapter's records on ``stream``: one line in place on a TTY, plain lines elsewhere."""

    def __init__(self, chapter: str, stream: TextIO, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = f"[{chapter}] "
        self.stream = stream
        # Several chapters side by side (book.build.execute_chapters) share the terminal: plain lines then.
        self.tty = (stream.isatty() and not os.environ.get(LINES_ENV)) if tty is None else tty
        self.clock = clock
        self.loops: dict[str, _Loop] = {}  # the open loops, in the order they started
        self._drawn = False  # a TTY status line is on screen
        self._lock = threading.Lock()

    def handle(self, record: Mapping[str, Any]) -> None:
        """Take one record of ``core.progress`` (a bar's state or a note)."""
        with self._lock:
            now = self.clock()
            if record["kind"] == "note":
                self._line(self.prefix + str(record["text"]))
            elif record["kind"] == "bar":
                loop = self.loops.get(record["id"])
                if loop is None:
                    loop = self.loops[record["id"]] = _Loop(record, now, now)
                loop.record, loop.received = record, now
                if record.get("closed"):
                    del self.loops[record["id"]]
                    if loop.printed or (record.get("leave") and (record.get("elapsed") or 0.0) >= MIN_FINAL):
                        self._line(self.prefix + describe(record))
            self._refresh(now)

    def tick(self) -> None:
        """Nothing arrived for a while: redraw the TTY line (its clocks move on) or print what is due."""
        with self._lock:
            self._refresh(self.clock())

    def finish(self) -> None:
        """The chapter ended: clear the TTY line; loops still open (a failed cell) are dropped."""
        with self._lock:
            self.loops.clear()
            self._refresh(self.clock())

    def _refresh(self, now: float) -> None:
        if self.tty:
            self._draw(now)
            return
        for loop in self.loops.values():
            if now - loop.last_line >= PLAIN_EVERY:
                loop.last_line, loop.printed = now, True
                self._line(self.prefix + describe(loop.record, loop.elapsed(now)))

    def _draw(self, now: float) -> None:
        if self.loops:
            status = self.prefix + " | ".join(describe(loop.record, loop.elapsed(now)) for loop in self.loops.values())
            width = shutil.get_terminal_size().columns - 1
            self._write("\r" + status[:width] + "\x1b[K")
            self._drawn = True
        elif self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def _line(self, text: str) -> None:
        self._write(("\r\x1b[K" if self._drawn else "") + text + "\n")
        self._drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class _CellBarFile:
    """Where papermill draws its cell bar (``bar_format="{n}/{total}"``): each frame becomes the loop ``cells``."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.start = display.clock()
        self.closed = False

    def write(self, text: str) -> None:
        found = re.findall(r"(\d+)/(\d+)", text)
        if self.closed or not (found or "\n" in text):
            return
        if found:
            self.n, self.total = (int(x) for x in found[-1])
        self.closed = "\n" in text  # tqdm ends a bar it leaves on screen with a newline
        self.display.handle({
            "kind": "bar", "id": "cells", "desc": "cells", "n": getattr(self, "n", 0),
            "total": getattr(self, "total", None), "unit": "cell", "elapsed": self.display.clock() - self.start,
            "rate": None, "postfix": None, "leave": True, "closed": self.closed,
        })

    def flush(self) -> None:
        pass


def _read(sock: socket.socket, display: Display, stop: threading.Event) -> None:
    """Hand every record arriving on ``sock`` to ``display`` until ``stop`` is set and a wake-up arrives."""
    while True:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            display.tick()
            continue
        except OSError:
            return
        if not data:  # the wake-up: every record sent before it has been handled
            if stop.is_set():
                return
            continue
        try:
            display.handle(json.loads(data))
        except (ValueError, KeyError, TypeError):
            continue  # a malformed record is skipped, never fatal


#: Set (to anything) when several chapters print to one terminal: every display prints plain lines.
LINES_ENV = "MEMORIES_PROGRESS_LINES"


@contextlib.contextmanager
def chapter_progress(chapter: str, enabled: bool = True, stream: TextIO | None = None) -> Iterator[Any]:
    """Show on ``stream`` (stderr) what the chapter's kernel reports while the body runs.

    Yields the ``progress_bar`` argument for ``papermill.execute_notebook``: papermill's cell bar
    drawn into the display, or False when not ``enabled`` (then ``MEMORIES_PROGRESS=off``: the
    kernel sends nothing and its notes are dropped rather than printed into the notebook).
    ``MEMORIES_PROGRESS`` is restored afterwards.
    """
    if not enabled:
        with child_environ(ENV, "off"):
            yield False
        return
    display = Display(chapter, stream or sys.stderr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(TICK)
        address = sock.getsockname()
        stop = threading.Event()
        reader = threading.Thread(target=_read, args=(sock, display, stop), name=f"progress {chapter}", daemon=True)
        reader.start()
        try:
            with child_environ(ENV, f"{address[0]}:{address[1]}"):
                yield {"file": _CellBarFile(display), "bar_format": "{n}/{total}"}
        finally:
            stop.set()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
                waker.sendto(b"", address)
            reader.join(timeout=5)
            display.finish()
