"""Progress bars and stage notes that reach the terminal of ``memories book`` from inside a chapter.

A chapter runs in a papermill kernel, a subprocess whose output goes into the notebook; what a
person watching ``memories book`` sees is the terminal of the parent. The parent
(``book.terminal``) opens a UDP socket on localhost and puts its address in the environment
variable :data:`ENV` (``127.0.0.1:PORT``) before the kernel starts; the kernel inherits it.
Here, :class:`tqdm` and :func:`note` send small JSON records to that address:

- ``{"kind": "bar", "id", "desc", "n", "total", "unit", "elapsed", "rate", "postfix", "leave", "closed"}``
  when a bar starts, at most every :data:`MIN_INTERVAL` seconds while it moves, and when it closes;
- ``{"kind": "note", "text"}`` for a stage message.

Sending never blocks and never fails a computation: a lost datagram is a lost update.
``ENV`` unset (a plain script, a notebook opened by hand): :class:`tqdm` is ``tqdm.auto``'s bar and
:func:`note` prints. ``ENV=off`` (a quiet ``memories book -q``): nothing is sent and notes are dropped.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import socket
import sys
import time
from typing import Any

from tqdm import std
from tqdm.auto import tqdm as _auto_tqdm

#: The environment variable holding the channel's address (``HOST:PORT``), or ``off``.
ENV = "MEMORIES_PROGRESS"
#: The least time between two reports of one bar (its first and last are always sent).
MIN_INTERVAL = 0.5

_clock = time.monotonic  # replaced in tests
_ids = itertools.count()
_sockets: dict[str, tuple[socket.socket, tuple[str, int]]] = {}
_TQDM_SIGNATURE = inspect.signature(std.tqdm.__init__)


def channel() -> str | None:
    """The channel's address from :data:`ENV`; ``"off"`` for a quiet run; None outside a chapter."""
    return os.environ.get(ENV) or None


def send(record: dict[str, Any]) -> bool:
    """Send ``record`` to the channel; True when there is one (``off`` included), whatever became of it."""
    address = channel()
    if address is None:
        return False
    if address == "off":
        return True
    try:
        if address not in _sockets:
            host, port = address.rsplit(":", 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            _sockets[address] = (sock, (host, int(port)))
        sock, target = _sockets[address]
        sock.sendto(json.dumps(record).encode(), target)
    except (OSError, ValueError):
        pass  # progress is never worth failing a computation for
    return True


def note(text: str, *, disable: bool = False) -> None:
    """A stage message ("training the world: stage vae").

    Inside a chapter run by ``memories book``/``memories run`` it goes to the terminal, never into
    the notebook; elsewhere it is printed to stderr unless ``disable`` (as tqdm's ``disable``, it
    silences the message here, not in a chapter's terminal).
    """
    if not send({"kind": "note", "text": str(text)}) and not disable:
        _auto_tqdm.write(str(text), file=sys.stderr)


class tqdm(_auto_tqdm):
    """``tqdm.auto``'s bar that also reports to the chapter's terminal when :data:`ENV` is set.

    A bar disabled here (``disable=True``, the library's ``progress=False``) still reports: a
    chapter keeps its notebook free of bars while its terminal shows them. Without :data:`ENV`
    it is exactly ``tqdm.auto.tqdm``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reporting = channel() not in (None, "off")
        if not self._reporting:
            return
        self._hidden = self.disable
        if self._hidden:  # tqdm keeps neither desc nor unit for a bar it does not show
            given = _TQDM_SIGNATURE.bind_partial(self, *args, **kwargs).arguments
            self.desc = given.get("desc") or ""
            self.unit = given.get("unit", "it")
            self.postfix = None
        self._report_id = f"{os.getpid()}:{next(_ids)}"
        self._started = self._last_report = _clock()
        self._initial = self.n
        self._closed = False
        self._report(force=True)

    def _report(self, force: bool = False) -> None:
        now = _clock()
        if not force and now - self._last_report < MIN_INTERVAL:
            return
        self._last_report = now
        elapsed = now - self._started
        send({
            "kind": "bar",
            "id": self._report_id,
            "desc": (self.desc or "").removesuffix(": "),
            "n": self.n,
            "total": self.total,
            "unit": self.unit,
            "elapsed": elapsed,
            "rate": (self.n - self._initial) / elapsed if elapsed > 0 else None,
            "postfix": self.postfix or None,
            "leave": self.leave is not False,
            "closed": self._closed,
        })

    def __iter__(self):
        if not (self._reporting and self._hidden):
            return super().__iter__()
        return self._hidden_iter()

    def _hidden_iter(self):
        try:
            for obj in self.iterable:
                yield obj
                self.n += 1
                self._report()
        finally:
            self.close()

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        if self._reporting and not self._closed:
            if self._hidden:  # tqdm counts only the bars it shows
                self.n += 1 if n is None else n
            self._report()
        return shown

    def close(self) -> None:
        if getattr(self, "_reporting", False) and not self._closed:
            self._closed = True
            self._report(force=True)
        super().close()
