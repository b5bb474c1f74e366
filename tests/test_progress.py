"""A chapter's progress in the terminal: the reporting tqdm (kernel side), the display (parent side), and both through papermill."""

from __future__ import annotations

import io
import json
import os
import re
import socket

import nbformat
import pytest
import tqdm.auto
from tqdm.std import tqdm as std_tqdm

from conftest import make_book_root
from memories_lib import book
from memories_lib.book import terminal
from memories_lib.core import progress


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for the reporting tqdm: set ``clock[0]``."""
    now = [0.0]
    monkeypatch.setattr(progress, "_clock", lambda: now[0])
    return now


@pytest.fixture
def channel(monkeypatch):
    """A UDP socket standing for the parent, its address in MEMORIES_PROGRESS; call it for the records sent so far."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    monkeypatch.setenv(progress.ENV, "127.0.0.1:%d" % sock.getsockname()[1])

    def received() -> list[dict]:
        records = []
        while True:
            try:
                records.append(json.loads(sock.recv(65536)))
            except socket.timeout:
                return records

    yield received
    sock.close()


def test_reporting_tqdm_sends_throttled_records(channel, clock):
    bar = progress.tqdm(total=10, desc="work", unit="step", file=io.StringIO())
    for t in (0.1, 0.2, 0.6, 0.7):  # at most one report per MIN_INTERVAL: at 0.6 only
        clock[0] = t
        bar.update()
    clock[0] = 0.8
    bar.set_postfix(loss=0.5)
    bar.close()
    bar.close()  # closed once
    records = channel()
    assert [(r["n"], r["closed"]) for r in records] == [(0, False), (3, False), (4, True)]
    first, _, last = records
    assert first["id"] == last["id"] and first["kind"] == "bar"
    assert (last["desc"], last["total"], last["unit"], last["postfix"], last["leave"]) == ("work", 10, "step", "loss=0.5", True)
    assert last["elapsed"] == pytest.approx(0.8) and last["rate"] == pytest.approx(4 / 0.8)


def test_a_bar_disabled_here_still_reports_but_prints_nothing(channel, clock, capsys):
    values = []
    bar = progress.tqdm(range(5), desc="hidden", disable=True)
    for i, value in enumerate(bar):
        clock[0] = 0.3 * (i + 1)
        bar.set_postfix(step=i)
        values.append(value)
    assert values == [0, 1, 2, 3, 4]
    records = channel()
    assert [(r["n"], r["closed"]) for r in records] == [(0, False), (2, False), (4, False), (5, True)]
    assert records[-1]["desc"] == "hidden" and records[-1]["total"] == 5 and records[-1]["postfix"] == "step=4"
    assert capsys.readouterr().err == ""
    manual = progress.tqdm(total=3, desc="manual", disable=True)
    manual.update(2)
    manual.close()
    assert channel()[-1]["n"] == 2


def test_without_the_variable_it_is_tqdm_auto_and_sends_nothing(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(progress, "_sockets", {})
    assert issubclass(progress.tqdm, tqdm.auto.tqdm)
    ours, theirs = io.StringIO(), io.StringIO()
    assert list(progress.tqdm(range(3), desc="x", file=ours, bar_format="{desc} {n}/{total}")) == [0, 1, 2]
    list(tqdm.auto.tqdm(range(3), desc="x", file=theirs, bar_format="{desc} {n}/{total}"))
    assert ours.getvalue() == theirs.getvalue() and "x 3/3" in ours.getvalue()
    assert list(progress.tqdm(range(2), disable=True)) == [0, 1]
    assert progress._sockets == {}, "nothing may be sent without MEMORIES_PROGRESS"


def test_note_prints_in_a_script_goes_to_the_channel_in_a_chapter_and_is_dropped_when_quiet(channel, monkeypatch,
                                                                                             capsys):
    progress.note("stage one")
    progress.note("stage two", disable=True)  # disable silences a script, not a chapter's terminal
    assert [r["text"] for r in channel()] == ["stage one", "stage two"]
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.ENV, "off")
    progress.note("quiet")
    progress.tqdm(range(2), disable=True).close()
    assert channel() == [] and capsys.readouterr().err == ""
    monkeypatch.delenv(progress.ENV)
    progress.note("in a script")
    progress.note("silenced", disable=True)
    assert capsys.readouterr().err == "in a script\n"


def _bar(n, *, total=150, desc="uce/cross: E", elapsed=41.0, rate=2.3, closed=False, leave=True, id="1:0", **more):
    return {"kind": "bar", "id": id, "desc": desc, "n": n, "total": total, "unit": "it", "elapsed": elapsed,
            "rate": rate, "postfix": None, "leave": leave, "closed": closed, **more}


def test_describe_formats_a_loop():
    assert terminal.describe(_bar(96)) == "uce/cross: E 96/150 00:41 2.3 it/s"
    assert terminal.describe(_bar(3, total=None, rate=0.25, elapsed=3725, postfix="loss=0.1")) == \
        "uce/cross: E 3 1:02:05 4.0 s/it, loss=0.1"
    assert terminal.describe(_bar(0, desc="", rate=None, elapsed=0)) == "0/150 00:00"
    assert terminal.describe(_bar(2.5, total=10, rate=1234.0), elapsed=61) == "uce/cross: E 2.5/10 01:01 1234 it/s"


def test_display_on_a_tty_rewrites_one_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    now = [100.0]
    out = io.StringIO()
    display = terminal.Display("04_concept_memory", out, tty=True, clock=lambda: now[0])
    display.handle(_bar(96))
    now[0] += 1
    display.tick()  # nothing arrived: the clock moves on
    display.handle(_bar(3, id="1:1", desc="inner", total=50, elapsed=0.5, rate=6.0))
    assert "\n" not in out.getvalue()
    frames = out.getvalue().split("\r")[1:]
    assert frames == [
        "[04_concept_memory] uce/cross: E 96/150 00:41 2.3 it/s\x1b[K",
        "[04_concept_memory] uce/cross: E 96/150 00:42 2.3 it/s\x1b[K",
        "[04_concept_memory] uce/cross: E 96/150 00:42 2.3 it/s | inner 3/50 00:00 6.0 it/s\x1b[K",
    ]
    out.truncate(0), out.seek(0)
    display.handle({"kind": "note", "text": "training the world: stage vae"})  # a line of its own, then the status again
    display.handle(_bar(50, id="1:1", desc="inner", total=50, elapsed=8.0, rate=6.0, closed=True, leave=False))
    assert out.getvalue().split("\r")[1:] == [
        "\x1b[K[04_concept_memory] training the world: stage vae\n",
        "[04_concept_memory] uce/cross: E 96/150 00:42 2.3 it/s | inner 3/50 00:00 6.0 it/s\x1b[K",
        "[04_concept_memory] uce/cross: E 96/150 00:42 2.3 it/s\x1b[K",  # an inner loop that is not left vanishes
    ]
    out.truncate(0), out.seek(0)
    display.handle(_bar(150, elapsed=65.0, closed=True))  # a loop left on screen gets its final line
    display.finish()
    assert out.getvalue() == "\r\x1b[K[04_concept_memory] uce/cross: E 150/150 01:05 2.3 it/s\n"
    monkeypatch.setenv("COLUMNS", "30")
    display.handle(_bar(1, id="2:0"))
    assert out.getvalue().endswith("\r[04_concept_memory] uce/cross\x1b[K"), "the line is cut to the terminal's width"


def test_display_elsewhere_prints_a_plain_line_at_most_every_ten_seconds():
    now = [0.0]
    out = io.StringIO()
    display = terminal.Display("03_erasure", out, tty=False, clock=lambda: now[0])
    for step in range(51):  # a loop reporting twice a second for 25 s, with an inner loop of 5 s
        now[0] = step / 2
        display.handle(_bar(step, total=50, desc="outer", elapsed=now[0], rate=2.0))
        if step == 4:
            display.tick()
        if 10 <= step <= 20:
            display.handle(_bar(step - 10, id="1:1", desc="inner", total=10, elapsed=now[0] - 5, rate=2.0,
                                closed=step == 20, leave=True))
    display.handle(_bar(1, id="1:2", desc="brief", total=1, elapsed=0.2, closed=True))  # left, but under MIN_FINAL
    display.handle(_bar(9, id="1:3", desc="gone", total=9, elapsed=3.0, closed=True, leave=False))
    display.handle({"kind": "note", "text": "stage two"})
    display.handle(_bar(50, total=50, desc="outer", elapsed=25.0, rate=2.0, closed=True))
    display.finish()
    assert out.getvalue().splitlines() == [
        "[03_erasure] outer 20/50 00:10 2.0 it/s",
        "[03_erasure] inner 10/10 00:05 2.0 it/s",
        "[03_erasure] outer 40/50 00:20 2.0 it/s",
        "[03_erasure] stage two",
        "[03_erasure] outer 50/50 00:25 2.0 it/s",
    ]


def test_papermill_cell_bar_becomes_the_loop_cells():
    now = [0.0]
    out = io.StringIO()
    display = terminal.Display("02_probe", out, tty=False, clock=lambda: now[0])
    cells = terminal._CellBarFile(display)
    bar = std_tqdm(total=3, unit="cell", desc="Executing", file=cells, bar_format="{n}/{total}")  # as papermill does
    now[0] = 12.0
    bar.update(2)
    bar.refresh()  # papermill's update draws at most every mininterval (0.1 s)
    bar.n = 3
    bar.refresh()
    bar.close()
    display.finish()
    assert out.getvalue().splitlines() == ["[02_probe] cells 2/3 00:12", "[02_probe] cells 3/3 00:12"]


def test_chapter_progress_opens_the_channel_and_restores_the_variable(monkeypatch):
    monkeypatch.setenv(progress.ENV, "before")
    out = io.StringIO()
    with terminal.chapter_progress("01_background", True, out) as progress_bar:
        assert os.environ[progress.ENV].startswith("127.0.0.1:")
        assert progress_bar["bar_format"] == "{n}/{total}"
        progress.note("hello from the kernel")
    assert os.environ[progress.ENV] == "before"
    assert out.getvalue() == "[01_background] hello from the kernel\n", "records sent before the end are all shown"
    monkeypatch.delenv(progress.ENV)
    with terminal.chapter_progress("01_background", False, out) as progress_bar:
        assert progress_bar is False and os.environ[progress.ENV] == "off"
    assert progress.ENV not in os.environ


TINY = """\
# Tiny

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
```

```{code-cell} ipython3
import time
from memories_lib.core.progress import note, tqdm

note("tiny stage")
for i in tqdm(range(12), desc="hidden loop", disable=True):
    time.sleep(0.1)
print("done")
```
"""


def test_a_chapter_shows_its_loops_in_the_terminal_and_not_in_the_notebook(tmp_path, capsys):
    root = make_book_root(tmp_path, {"05_tiny": TINY})
    out = book.execute_chapter(book.resolve_chapter(root, "05_tiny"), "tiny", out_dir=tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[05_tiny]")]
    assert "[05_tiny] tiny stage" in lines
    assert any(line.startswith("[05_tiny] hidden loop 12/12 00:01 ") for line in lines), err
    assert re.match(r"\[05_tiny\] cells (\d+)/\1 ", lines[-1]), "papermill's cell bar ends the chapter's lines"
    assert progress.ENV not in os.environ
    nb = nbformat.read(out, as_version=4)
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "done" in text
    assert "tiny stage" not in text and "hidden loop" not in text and "[05_tiny]" not in text
