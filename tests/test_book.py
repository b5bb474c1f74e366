"""The book pipeline: chapters and parameters, papermill execution, and the rendered book end to end."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from conftest import REPO, make_book_root
from memories_lib import __version__, book
from memories_lib.core import paths
from memories_lib.book import BookError, NotebookParameter, ParameterError
from memories_lib.book import sphinx as book_sphinx
from memories_lib.core.profile import PROFILES_DIR, list_profiles, load_profile

PARAMS = """\
# Parameters

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
seed = 0  # seed
rate = 0.5  # a float
name = "triangle"  # a string
concepts = ["star"]  # a list
options = {"a": 1}  # a mapping
flag = False  # a boolean
anything = None  # no type
shape = (1, 2)  # a tuple
computed = 2 ** 3  # not a literal
```
"""

# Parameters with type annotations (a default of None no longer means "anything goes").
ANNOTATED = """\
# Annotated

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
num_images: int | None = None  # how many images (None: the profile's choice)
rate: float | None = None  # a float or None
label: None | str = None  # None first
concepts: list[str] | None = None  # a list (its items are not checked)
flag: bool = False  # a boolean, not None
count: int = 3  # an integer, not None
```
"""

# Runs in the kernel: records which interpreter ran it, the value of an annotated parameter, and glues a value.
PROBE = """\
# Probe

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
num_steps = 1  # steps
limit: int | None = None  # an annotated parameter
```

```{code-cell} ipython3
import os, sys
from myst_nb import glue
print("EXECUTABLE=" + sys.executable)
print("CWD=" + os.getcwd())
print("CACHE=" + os.environ.get("MEMORIES_CACHE", ""))
print(f"LIMIT={limit!r}")
glue("steps_squared", num_steps ** 2, display=False)
```
"""

FAILING = """\
# Fails

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
```

```{code-cell} ipython3
values = [1, 2]
```

```{code-cell} ipython3
values[5]
```

```{code-cell} ipython3
print("never reached")
```
"""


@pytest.fixture
def root(tmp_path):
    notebooks = {"01_params": PARAMS, "02_probe": PROBE, "03_fails": FAILING, "04_annotated": ANNOTATED}
    return make_book_root(tmp_path, notebooks)


def _chapter(root: Path, name: str) -> book.Chapter:
    return book.resolve_chapter(root, name)


# --------------------------------------------------------------------------- chapters and parameters


def test_chapters_follow_the_toc(root):
    found = book.chapters(root)
    assert [c.name for c in found] == ["01_params", "02_probe", "03_fails", "04_annotated"]
    assert found[0].source == root / "notebooks" / "01_params.md"
    assert found[0].executed == root / "_executed" / "01_params.ipynb"


def test_repository_toc_lists_existing_chapters_and_pages():
    found = book.chapters(REPO)
    assert found, "the repository's _toc.yml lists no executed chapter"
    assert all(c.source.is_file() for c in found)
    toc_files = book.toc._toc_files(yaml.safe_load((REPO / "_toc.yml").read_text()))
    for entry in toc_files:
        if not entry.startswith(book.EXECUTED_DIR):
            assert (REPO / f"{entry}.md").is_file(), f"_toc.yml lists {entry} but {entry}.md is missing"


def test_toc_entry_without_source_is_an_error(root):
    (root / "notebooks" / "02_probe.md").unlink()
    with pytest.raises(BookError, match="02_probe"):
        book.chapters(root)


def test_notebook_parameters_reads_defaults_and_types(root):
    params = book.notebook_parameters(root / "notebooks" / "01_params.md")
    assert list(params) == ["profile", "seed", "rate", "name", "concepts", "options", "flag", "anything",
                            "shape", "computed"]
    assert params["seed"] == NotebookParameter(0, int)
    assert params["rate"] == NotebookParameter(0.5, float)
    assert params["name"] == NotebookParameter("triangle", str)
    assert params["concepts"] == NotebookParameter(["star"], list)
    assert params["options"] == NotebookParameter({"a": 1}, dict)
    assert params["flag"] == NotebookParameter(False, bool)
    assert params["anything"] == NotebookParameter(None, None)
    assert params["shape"] == NotebookParameter((1, 2), tuple)
    assert params["computed"].type is None  # not a literal: anything goes


def test_notebook_without_parameters_cell_is_an_error(tmp_path):
    make_book_root(tmp_path, {"01_x": "# X\n\n```{code-cell} ipython3\nx = 1\n```\n"})
    with pytest.raises(ParameterError, match="tagged 'parameters'"):
        book.notebook_parameters(tmp_path / "notebooks" / "01_x.md")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"seed": 3}, {"seed": 3}),
        ({"rate": 2}, {"rate": 2.0}),  # an int where a float is declared
        ({"rate": 1e-3}, {"rate": 1e-3}),
        ({"concepts": ["a", "b"]}, {"concepts": ["a", "b"]}),
        ({"concepts": ("a",)}, {"concepts": ["a"]}),
        ({"shape": [3, 4]}, {"shape": (3, 4)}),
        ({"anything": [1, {"x": 2}]}, {"anything": [1, {"x": 2}]}),
        ({"computed": "whatever"}, {"computed": "whatever"}),
        ({"flag": True, "options": {}}, {"flag": True, "options": {}}),
    ],
)
def test_check_parameters_accepts_and_converts(root, overrides, expected):
    checked = book.check_parameters(_chapter(root, "01_params"), overrides)
    assert checked == expected
    assert all(type(checked[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"sed": 1}, r"unknown parameter 'sed' for notebook 01_params\.md; its parameters are: profile, seed, rate"),
        ({"seed": 1.5}, r"'seed' of notebook 01_params\.md must be an integer.*got 1\.5"),
        ({"seed": True}, r"'seed' .* must be an integer"),
        ({"seed": "3"}, r"'seed' .* must be an integer.*got '3' \(str\)"),
        ({"rate": "fast"}, r"'rate' .* must be a number"),
        ({"rate": False}, r"'rate' .* must be a number"),
        ({"name": 5}, r"'name' .* must be a string"),
        ({"concepts": "star"}, r"'concepts' .* must be a list"),
        ({"options": [1]}, r"'options' .* must be a mapping"),
        ({"flag": 1}, r"'flag' .* must be a boolean"),
    ],
)
def test_check_parameters_rejects(root, overrides, pattern):
    with pytest.raises(ParameterError, match=pattern):
        book.check_parameters(_chapter(root, "01_params"), overrides)


def test_notebook_parameters_reads_annotations(root):
    params = book.notebook_parameters(root / "notebooks" / "04_annotated.md")
    assert list(params) == ["profile", "num_images", "rate", "label", "concepts", "flag", "count"]
    assert params["profile"] == NotebookParameter("tiny", str)
    assert params["num_images"] == NotebookParameter(None, int, optional=True)
    assert params["rate"] == NotebookParameter(None, float, optional=True)
    assert params["label"] == NotebookParameter(None, str, optional=True)
    assert params["concepts"] == NotebookParameter(None, list, optional=True)
    assert params["flag"] == NotebookParameter(False, bool)
    assert params["count"] == NotebookParameter(3, int)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"num_images": 5}, {"num_images": 5}),
        ({"num_images": None}, {"num_images": None}),
        ({"rate": 2}, {"rate": 2.0}),
        ({"rate": None}, {"rate": None}),
        ({"label": "x"}, {"label": "x"}),
        ({"concepts": ("star",)}, {"concepts": ["star"]}),
        ({"concepts": None, "flag": True, "count": 4}, {"concepts": None, "flag": True, "count": 4}),
    ],
)
def test_annotated_parameters_accept_their_type_and_none(root, overrides, expected):
    checked = book.check_parameters(_chapter(root, "04_annotated"), overrides)
    assert checked == expected
    assert all(type(checked[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"num_images": "abc"}, r"'num_images' of notebook 04_annotated\.md must be an integer or None "
                                r"\(its default is None\), got 'abc' \(str\)"),
        ({"num_images": 2.5}, r"'num_images' .* must be an integer or None"),
        ({"num_images": True}, r"'num_images' .* must be an integer or None"),
        ({"rate": "fast"}, r"'rate' .* must be a number or None"),
        ({"label": 5}, r"'label' .* must be a string or None"),
        ({"concepts": "star"}, r"'concepts' .* must be a list or None"),
        ({"flag": None}, r"'flag' .* must be a boolean \("),
        ({"count": None}, r"'count' .* must be an integer \("),
        ({"num_image": 5}, r"unknown parameter 'num_image' for notebook 04_annotated\.md; "
                           r"its parameters are: profile, num_images, rate"),
    ],
)
def test_annotated_parameters_reject(root, overrides, pattern):
    with pytest.raises(ParameterError, match=pattern):
        book.check_parameters(_chapter(root, "04_annotated"), overrides)


def test_profile_values_are_checked_against_annotations(root):
    params = book.chapter_parameters(_chapter(root, "04_annotated"), "tiny")
    assert params == {"profile": "tiny", "num_images": load_profile("tiny").parameters["num_images"]}


def _parameters_only(tmp_path: Path, cell: str) -> Path:
    """The source of a one-chapter book whose chapter has only a parameters cell with ``cell``."""
    make_book_root(tmp_path, {"01_x": f"# X\n\n```{{code-cell}} ipython3\n:tags: [parameters]\n\n{cell}\n```\n"})
    return tmp_path / "notebooks" / "01_x.md"


@pytest.mark.parametrize("annotation", ["Path | None", "int | str", "Any"])
def test_unsupported_annotation_is_an_error(tmp_path, annotation):
    source = _parameters_only(tmp_path, f"profile = 'tiny'\nwhere: {annotation} = None")
    expected = rf"'where' of notebook 01_x\.md has the annotation '{re.escape(annotation)}'"
    with pytest.raises(ParameterError, match=expected):
        book.notebook_parameters(source)


def test_parameters_cell_must_be_python(tmp_path):
    source = _parameters_only(tmp_path, "profile = ")
    with pytest.raises(ParameterError, match=r"parameters cell of notebook 01_x\.md is not valid Python"):
        book.notebook_parameters(source)


@pytest.mark.parametrize(
    "text, value",
    [("8", 8), ("2.5", 2.5), ("1e-3", 1e-3), ("-2E4", -2e4), ("star", "star"), ('["star"]', ["star"]),
     ("[1, 2]", [1, 2]), ("{a: 1}", {"a": 1}), ("true", True), ("null", None), ("", ""), ("'8'", "8")],
)
def test_parse_value_reads_yaml(text, value):
    parsed = book.parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_value_rejects_broken_yaml():
    with pytest.raises(ParameterError, match="not valid YAML"):
        book.parse_value("[unclosed")


def test_chapter_parameters_merge_profile_then_overrides(root):
    chapter = _chapter(root, "02_probe")
    tiny = load_profile("tiny")
    params = book.chapter_parameters(chapter, "tiny")
    # the profile's own parameters that the notebook declares, and no others
    assert params == {"profile": "tiny", "num_steps": tiny.parameters["num_steps"]}
    assert book.chapter_parameters(chapter, "tiny", {"num_steps": 7})["num_steps"] == 7
    with pytest.raises(ParameterError, match="--profile"):
        book.chapter_parameters(chapter, "tiny", {"profile": "mini"})


def test_wrong_type_from_profile_names_the_profile(root, tmp_path):
    raw = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    raw["parameters"] = {"num_steps": "ten"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParameterError, match=r"'num_steps'.*comes from profile 'tiny'"):
        book.chapter_parameters(_chapter(root, "02_probe"), path)


@pytest.mark.parametrize("name", list_profiles())
def test_every_key_of_a_shipped_profile_is_used_by_the_book(name):
    """Each key under a shipped profile's ``parameters`` is declared by a chapter of the book or read by the library."""
    declared = {p for chapter in book.chapters(REPO) for p in book.notebook_parameters(chapter.source)}
    assert book.unused_profile_parameters(name, declared) is None


def test_a_profile_key_no_chapter_declares_is_named_before_the_book_runs(root, tmp_path, monkeypatch, capsys):
    raw = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    raw["parameters"]["decoder_step"] = 3000  # a misspelt decoder_steps
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    declared = {p for chapter in book.chapters(root) for p in book.notebook_parameters(chapter.source)}
    message = book.unused_profile_parameters(path, declared)
    assert "'decoder_step'" in message and str(path) in message and "num_steps" in message
    assert "'tuning'" not in message  # a key the library reads itself (memories tune-erasure)

    def stop(*args, **kwargs):
        raise BookError("stop before any work")

    monkeypatch.setattr(book.build, "warm_matplotlib", stop)
    with pytest.raises(BookError, match="stop before any work"):
        book.build_book(path, {}, root, progress=False)
    assert "warning: " + message in capsys.readouterr().err


def test_prepare_models_checks_the_erased_models_before_the_world_trains(tmp_path, monkeypatch):
    raw = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    raw["erased_models"]["esd-x"]["iteration"] = 5  # a misspelt iterations
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))

    def forbidden(*args, **kwargs):
        raise AssertionError("the world was prepared before its erased models were checked")

    monkeypatch.setattr(book.build.open_world(path).__class__, "prepare", forbidden)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['iteration'\] for esd-x"):
        book.prepare_models(path, progress=False)


# --------------------------------------------------------------------------- banner, MathJax, Sphinx hook


def test_banner_is_an_admonition_naming_profile_device_versions_and_seed():
    import torch

    text = book.banner_markdown("tiny", seed=123)
    assert text.startswith("```{admonition}") and text.rstrip().endswith("```")
    assert "`" not in text.splitlines()[0].removeprefix("```"), "a backtick in the fence's info string breaks the admonition"
    tiny = load_profile("tiny")
    for piece in (tiny.name, tiny.description, tiny.resolve_device(), __version__, torch.__version__, "123"):
        assert piece in text


def test_banner_names_a_missing_gpu_honestly():
    import torch

    text = book.banner_markdown("tiny", seed=0, device="cuda")
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in text
    else:
        assert "cuda (not available on this machine)" in text


def test_banner_says_when_numbers_are_not_to_be_interpreted():
    tiny = load_profile("tiny")
    assert not tiny.interpret
    lines = book.banner_markdown(tiny, seed=0).splitlines()
    assert lines.count(book.banner.NOT_INTERPRETED) == 1
    # the line follows the profile's field, not its name
    interpreted = dataclasses.replace(tiny, interpret=True)
    assert book.banner.NOT_INTERPRETED not in book.banner_markdown(interpreted, seed=0)


def test_show_banner_displays_markdown(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    book.show_banner("tiny", seed=5)
    (obj,) = shown
    assert obj._repr_markdown_() == book.banner_markdown("tiny", seed=5)


def test_vendor_mathjax_copies_a_working_mathjax_once(tmp_path):
    dest = book.vendor_mathjax(tmp_path)
    assert dest == tmp_path / "_static" / "mathjax"
    entry = dest / "tex-mml-chtml.js"
    assert entry.stat().st_size > 100_000
    assert list((dest / "output" / "chtml" / "fonts").rglob("*.woff")), "the CHTML fonts are missing"
    stamp = entry.stat().st_mtime_ns
    book.vendor_mathjax(tmp_path)
    assert entry.stat().st_mtime_ns == stamp, "a second call must not copy again"


def test_config_names_an_importable_sphinx_extension():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    extensions = config["sphinx"]["extra_extensions"]
    assert "memories_lib.book.sphinx" in extensions
    for name in extensions:
        assert callable(importlib.import_module(name).setup), f"{name} has no Sphinx setup()"


def test_sphinx_hook_drops_vendored_scripts_only():
    class Config:
        html_js_files = ["mathjax/tex-mml-chtml.js", ("mathjax/ui/menu.js", {}), "custom.js"]
        html_css_files = ["mathjax/x.css", "site.css"]

    config = Config()
    book_sphinx._drop_vendored_scripts(None, config)
    assert config.html_js_files == ["custom.js"]
    assert config.html_css_files == ["site.css"]


# --------------------------------------------------------------------------- execution with papermill


def _stream_text(nb) -> str:
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )


def test_execute_chapter_runs_in_this_interpreter_at_the_root(root, memories_cache, caplog, capfd):
    caplog.set_level(logging.WARNING, logger="papermill")
    out = book.execute_chapter(_chapter(root, "02_probe"), "tiny", {"num_steps": 3, "limit": 5}, root / "out",
                               progress=False)
    assert out == root / "out" / "02_probe.ipynb"
    nb = nbformat.read(out, as_version=4)
    text = _stream_text(nb)
    assert f"EXECUTABLE={sys.executable}" in text, "the python3 kernel must be this environment's interpreter"
    assert f"CWD={root}" in text
    assert f"CACHE={memories_cache}" in text
    assert "LIMIT=5" in text, "the injected value of an annotated parameter must win over its default"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "num_steps = 3" in injected[0].source and 'profile = "tiny"' in injected[0].source
    assert "limit = 5" in injected[0].source
    # papermill's own inspection misses 'limit: int | None'; its "unknown parameter" warning is dropped
    assert "unknown parameter" not in caplog.text
    glued = [o for c in nb.cells for o in c.get("outputs", []) if o.get("metadata", {}).get("scrapbook")]
    assert glued and glued[0]["metadata"]["scrapbook"]["name"] == "steps_squared"
    assert [v for k, v in glued[0]["data"].items() if k.endswith("text/plain")] == ["9"]
    # the run is logged beside the executed copy: papermill's duration, nothing cached, so warm
    (run,) = book.statistics.read_log(root / "out" / book.statistics.LOG_NAME)
    assert (run.chapter, run.profile, run.cache, run.cache_files_added) == ("02_probe", "tiny", "warm", 0)
    assert run.seconds == pytest.approx(nb.metadata["papermill"]["duration"], abs=0.01)
    assert run.machine["cpu_count"] and run.machine["torch_threads"] >= 1
    # the kernel talks over Unix sockets: no TCP port, and no warning about unencrypted TCP in the terminal
    assert "without encryption" not in capfd.readouterr().err


def test_statistics_page_shows_the_latest_cold_and_warm_run_per_chapter(tmp_path):
    stats = book.statistics
    log = tmp_path / stats.LOG_NAME
    day = __import__("datetime").datetime(2026, 1, 2, 3, 4, 5)
    stats.record_run(log, "02_b", "tiny", 125.0, cache_files_added=40, date=day)
    stats.record_run(log, "02_b", "tiny", 30.4, cache_files_added=0, date=day)
    stats.record_run(log, "02_b", "tiny", 28.0, cache_files_added=0, date=day)  # the latest warm run wins
    stats.record_run(log, "01_a", "mini", 9000.0, cache_files_added=3, date=day)
    with log.open("a") as handle:
        handle.write("not json\n")  # a damaged line is skipped, not fatal
    runs = stats.read_log(log)
    assert [r.cache for r in runs] == ["cold", "warm", "warm", "cold"]
    page = stats.statistics_markdown(runs, ["01_a", "02_b"])
    rows = [line for line in page.splitlines() if line.startswith("| 0")]
    assert rows[0] == "| 01_a | mini | 2.5 h (2026-01-02, M1) | not recorded | 3 |"
    assert rows[1] == "| 02_b | tiny | 2.1 min (2026-01-02, M1) | 28 s (2026-01-02, M1) | 40 |"
    assert "- **M1**: " in page and "cores" in page
    assert "4 run(s) recorded" in page
    assert "No chapter run" in stats.statistics_markdown([], ["01_a"])
    written = stats.write_statistics_page(tmp_path, ["01_a", "02_b"])
    assert written.name == stats.PAGE_NAME and written.read_text() == page


STORES = """\
# Stores

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
key = "a"  # the entry's key
```

```{code-cell} ipython3
import torch
from memories_lib.core.store import default_store

store = default_store()
if store.get(store.key(test=key)) is None:
    store.put(store.key(test=key), {"x": torch.ones(2)})
```
"""


BESIDE = """
import sys, time
from pathlib import Path
from memories_lib.core.paths import cache_dir
stop, n = Path(sys.argv[1]), 0
while not stop.exists() and n < 2000:
    (cache_dir() / f"beside-{n}").write_bytes(b"x")
    n += 1
    time.sleep(0.01)
"""


def test_a_run_is_cold_when_its_own_kernel_writes_to_the_cache_whatever_runs_beside_it(tmp_path, memories_cache):
    root = make_book_root(tmp_path / "book", {"05_stores": STORES, "02_probe": PROBE})
    first = book.execute_chapter(_chapter(root, "05_stores"), "tiny", {"key": f"k-{tmp_path.name}"}, progress=False)
    book.execute_chapter(_chapter(root, "05_stores"), "tiny", {"key": f"k-{tmp_path.name}"}, progress=False)
    # a chapter that computes nothing, while another process (as a chapter beside it would) fills the cache
    stop = tmp_path / "stop"
    beside = subprocess.Popen([sys.executable, "-c", BESIDE, str(stop)])
    try:
        book.execute_chapter(_chapter(root, "02_probe"), "tiny", progress=False)
    finally:
        stop.touch()
        assert beside.wait(timeout=60) == 0
    assert len(list(memories_cache.rglob("beside-*"))) > 0, "the process beside wrote nothing during the run"
    runs = book.statistics.read_log(first.parent / book.statistics.LOG_NAME)
    assert [(r.chapter, r.cache, r.cache_files_added) for r in runs] == [
        ("05_stores", "cold", 1), ("05_stores", "warm", 0), ("02_probe", "warm", 0)]
    assert paths.CACHE_WRITES_ENV not in os.environ  # the runner leaves the environment as it found it


def test_cache_writes_are_noted_only_where_the_runner_asks(tmp_path, monkeypatch):
    from memories_lib.core.store import Store, write_folder_atomically

    log = tmp_path / "writes"
    monkeypatch.delenv(paths.CACHE_WRITES_ENV, raising=False)
    Store(tmp_path / "s").put(Store.key(test="a"), {"x": torch.ones(1)})
    assert paths.count_cache_writes(log) == 0  # nobody asked
    monkeypatch.setenv(paths.CACHE_WRITES_ENV, str(log))
    Store(tmp_path / "s").put(Store.key(test="b"), {"x": torch.ones(1)})
    write_folder_atomically(tmp_path / "folder", lambda tmp: tmp.mkdir())
    assert paths.count_cache_writes(log) == 2  # one entry, one folder


def test_failed_cell_raises_book_error_and_keeps_the_executed_copy(root):
    chapter = _chapter(root, "03_fails")
    with pytest.raises(BookError) as info:
        book.execute_chapter(chapter, "tiny", progress=False)
    message = str(info.value)
    assert "03_fails.md" in message and "IndexError" in message and "values[5]" in message
    assert re.search(r"cell \d+ \(In \[\d+\]", message)
    assert chapter.executed.is_file()
    nb = nbformat.read(chapter.executed, as_version=4)
    assert "never reached" not in _stream_text(nb)


def test_build_book_checks_every_chapter_before_work(root, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started although a parameter was invalid")

    monkeypatch.setattr(book.execute, "run_notebook", forbidden)
    monkeypatch.setattr(book.mathjax, "vendor_mathjax", forbidden)
    monkeypatch.setattr(book.build, "warm_matplotlib", forbidden)
    monkeypatch.setattr(book.build, "prepare_models", forbidden)
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['nope'\]"):
        book.build_book("tiny", {"nope": 1}, root)
    # 'rate' is declared by 01_params only; a wrong type there is caught before 02 and 03 run
    with pytest.raises(ParameterError, match="'rate'"):
        book.build_book("tiny", {"rate": "x"}, root)
    # 'num_images: int | None = None' in 04_annotated: a string is refused too
    with pytest.raises(ParameterError, match="'num_images' of notebook 04_annotated.md must be an integer or None"):
        book.build_book("tiny", {"num_images": "abc"}, root)


def test_build_book_prepares_the_models_before_the_first_chapter(root, monkeypatch, memories_cache):
    calls = []
    real_prepare = book.prepare_models

    def prepare(profile, progress):
        calls.append("models")
        real_prepare(profile, progress=False)

    def run_notebook(chapter, *args):
        calls.append(chapter.name)
        raise BookError("stop after the first chapter")

    monkeypatch.setattr(book.mathjax, "vendor_mathjax", lambda root: None)
    monkeypatch.setattr(book.build, "prepare_models", prepare)
    monkeypatch.setattr(book.execute, "run_notebook", run_notebook)
    monkeypatch.setenv("MEMORIES_THREADS", "1")  # one chapter at a time, in this process (where the patches are)
    with pytest.raises(BookError, match="stop after"):
        book.build_book("tiny", {}, root, progress=False)
    assert calls == ["models", "01_params"]
    assert list((memories_cache / "models").glob("random-ldm-32-*/model_index.json")), "the tiny model was not built"


@pytest.mark.parametrize("rank", [0, 1])
def test_under_a_launcher_every_process_runs_the_chapters_in_order_and_main_builds(root, monkeypatch, rank):
    """accelerate launch ... memories book: the chapters one at a time in toc order in every process (so their
    loops are shared), however many cores; main alone prepares the models and builds the book."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("MEMORIES_THREADS", "2")  # side by side without a launcher
    monkeypatch.setattr(book.mathjax, "vendor_mathjax", lambda root: None)
    monkeypatch.setattr(book.build, "prepare_models", lambda profile, progress: calls.append("models"))
    monkeypatch.setattr(book.execute, "run_notebook", lambda chapter, *args: calls.append(chapter.name))
    monkeypatch.setattr(book.statistics, "write_statistics_page", lambda *args: calls.append("statistics"))

    def jupyter_book(*args, **kwargs):
        calls.append("html")
        raise BookError("no html here")

    monkeypatch.setattr(book.build.subprocess, "run", jupyter_book)
    names = [c.name for c in book.chapters(root)]
    if rank == 0:
        with pytest.raises(BookError, match="no html"):
            book.build_book("tiny", {}, root, progress=False)
        assert calls == ["models", *names, "statistics", "html"]
    else:
        assert book.build_book("tiny", {}, root, progress=False) is None
        assert calls == names


# --------------------------------------------------------------------------- the real book, end to end


@pytest.mark.slow
def test_memories_book_builds_the_html_book(built_book):
    assert built_book.returncode == 0, built_book.failure()
    html = built_book.html
    assert (html / "index.html").is_file()
    chapter_pages = [html / f"{book.EXECUTED_DIR}/{c.name}.html" for c in book.chapters(built_book.root)]
    assert chapter_pages and all(p.is_file() for p in chapter_pages)
    assert (html / "book" / "reproduce.html").is_file() and (html / "book" / "references.html").is_file()
    statistics = (html / "book" / "execution.html").read_text()
    for chapter in book.chapters(built_book.root):
        assert f"<td><p>{chapter.name}</p></td>" in statistics or f"<td>{chapter.name}</td>" in statistics
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()


@pytest.mark.slow
def test_built_pages_load_nothing_from_the_network(built_book):
    assert built_book.returncode == 0, built_book.failure()
    pages = list(built_book.html.rglob("*.html"))
    assert pages
    loads = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(https?:)?//", re.I)
    for page in pages:
        text = page.read_text()
        cdn = re.search(r"https?://[^\"'\s]*cdn", text, re.I)
        assert cdn is None, f"{page} refers to a CDN: {cdn and cdn.group(0)}"
        assert not loads.search(text), f"{page} loads a resource from the network: {loads.search(text).group(0)}"


@pytest.mark.slow
def test_banner_and_glued_values_reach_the_chapter_page(built_book):
    assert built_book.returncode == 0, built_book.failure()
    name = book.chapters(built_book.root)[0].name
    text = (built_book.html / book.EXECUTED_DIR / f"{name}.html").read_text()
    assert "admonition" in text and "Executed with the tiny profile" in text
    assert "```{admonition}" not in text, "the banner was not rendered as an admonition"
    assert __version__ in text


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_chapter_renders_in_headless_chromium(built_book, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    assert built_book.returncode == 0, built_book.failure()
    name = book.chapters(built_book.root)[0].name
    page = (built_book.html / book.EXECUTED_DIR / f"{name}.html").as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync",
              "--proxy-server=127.0.0.1:9", "--virtual-time-budget=15000"]

    dom = subprocess.run([*common, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "<mjx-container" in html, "MathJax did not typeset the page (offline copy not loaded?)"
    # the page's text outside code blocks: MathJax replaces every \[..\] and \(..\) it typesets
    text = re.sub(r"<(script|style|pre)\b.*?</\1>|<[^>]+>", " ", html, flags=re.S)
    for raw in ("$$", "\\[", "\\("):
        assert raw not in text, f"raw math ({raw}) is left in the page"
    images = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]+\.png)\"", html)
    assert images, "the chapter's figure is missing"
    figure = (built_book.html / book.EXECUTED_DIR / images[0]).resolve()
    assert figure.is_file() and figure.stat().st_size > 5_000

    shot = tmp_path / "chapter.png"
    done = subprocess.run([*common, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}",
                           "--window-size=1200,2000", page], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 30_000, "the screenshot is missing or blank"
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1200, 2000)
        colours = img.convert("L").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20, "the screenshot is a blank page"


def test_paper_table_heads_the_book_column_with_the_profile_and_escapes_pipes():
    table = book.paper_table_markdown("tiny", [("latent d", 256, "16,384", "a|b smaller\nmodel")])
    header, rule, row = table.splitlines()
    assert header == "| | this book (`tiny`) | the paper | what differs, and why |" and rule == "|---|---|---|---|"
    assert row == "| **latent d** | 256 | 16,384 | a\\|b smaller model |"


def test_erasure_sweeps_and_the_prompt_test_reach_chapters_3_and_4(built_book):
    """The tiny book's sweeps (run by `memories tune-erasure` before the build) are drawn in chapter 3,
    and chapter 4's table and verdict carry each erased model's prompt-test verdict."""
    assert built_book.returncode == 0, built_book.failure()
    erasure = (built_book.html / book.EXECUTED_DIR / "03_erasure.html").read_text()
    assert 'id="fig-erasure-tradeoff"' in erasure or "fig-erasure-tradeoff" in erasure
    assert "settings passing on every training" in erasure
    memory = (built_book.html / book.EXECUTED_DIR / "04_concept_memory.html").read_text()
    assert ": passes" in memory or ": FAILS" in memory
    assert "pass the prompt test" in memory


def test_chapters_run_side_by_side_in_processes(root, monkeypatch, memories_cache):
    # Two allowed threads: two chapters at a time, each in a process of its own with one thread.
    monkeypatch.setenv("MEMORIES_THREADS", "2")
    plans = [(c, book.chapter_parameters(c, "tiny")) for c in book.chapters(root)][:2]
    book.build.execute_chapters(plans, root, progress=False)
    for chapter, _ in plans:
        nb = nbformat.read(chapter.executed, as_version=4)
        assert nb.metadata["papermill"]["parameters"]["profile"] == "tiny"
    log = plans[0][0].executed.parent / book.statistics.LOG_NAME
    runs = [json.loads(line) for line in log.read_text().splitlines()][-2:]
    assert sorted(r["chapter"] for r in runs) == sorted(c.name for c, _ in plans)
    assert all(r["machine"]["memories_threads"] == "1" for r in runs)  # each process had one share of the cores


@pytest.mark.slow
def test_chapter_3_draws_its_tradeoff_figure_without_sweeps_in_the_store(tmp_path):
    # A first `make book` has no sweep points (memories tune-erasure is not part of it): the figure that
    # the prose refers to must still exist, or the build fails on an unresolved reference.
    from conftest import copy_repo, memories_command

    root = copy_repo(tmp_path / "repo")
    env = {**os.environ, "MEMORIES_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "03.ipynb"
    done = subprocess.run([*memories_command(), "run", "03_erasure", "--profile", "tiny", "-q", "-o", str(out)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    [cell] = [c for c in nb.cells
              if c.metadata.get("mystnb", {}).get("figure", {}).get("name") == "fig-erasure-tradeoff"]
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)
    assert "No sweep point in the store" in "".join(c.source for c in nb.cells if c.cell_type == "code")


def test_chapters_side_by_side_start_longest_first(tmp_path):
    # The front matter's estimate orders a fresh clone; a cold run in the execution log overrides it.
    root = make_book_root(tmp_path / "book", {"01_a": PARAMS, "02_b": PARAMS, "03_c": PARAMS})
    for name, minutes in (("02_b", 3), ("03_c", 20)):
        source = root / "notebooks" / f"{name}.md"
        source.write_text(source.read_text().replace("---\n", f"---\nmemories:\n  cold_minutes: {minutes}\n", 1))
    plans = [(c, {"profile": "tiny"}) for c in book.chapters(root)]
    assert [c.name for c, _ in book.build.longest_first(plans, root)] == ["03_c", "02_b", "01_a"]
    log = root / book.EXECUTED_DIR / book.statistics.LOG_NAME
    book.statistics.record_run(log, "01_a", "tiny", 2000.0, cache_files_added=5)   # cold: 33 min
    book.statistics.record_run(log, "03_c", "mini", 1.0, cache_files_added=5)      # another profile
    book.statistics.record_run(log, "02_b", "tiny", 5.0, cache_files_added=0)      # warm: not an estimate
    assert [c.name for c, _ in book.build.longest_first(plans, root)] == ["01_a", "03_c", "02_b"]


def test_front_matter_is_read_and_a_broken_one_is_named(tmp_path):
    source = tmp_path / "c.md"
    source.write_text("---\nmemories:\n  cold_minutes: 4\n---\n# C\n")
    assert book.toc.front_matter(source) == {"memories": {"cold_minutes": 4}}
    source.write_text("# no front matter\n")
    assert book.toc.front_matter(source) == {}
    source.write_text("---\nmemories: [unclosed\n---\n")
    with pytest.raises(BookError, match="front matter"):
        book.toc.front_matter(source)


def test_whole_number_names_the_parameter_it_refuses():
    import numpy as np

    from memories_lib.book import ParameterError, whole_number

    assert whole_number("n", 3, 1) == 3 and whole_number("n", np.int64(5), 5) == 5
    for bad in (0, -1, 2.0, "3", True, None):
        with pytest.raises(ParameterError, match=r"parameter n must be a whole number >= 1, got"):
            whole_number("n", bad, 1)


def test_a_chapter_of_another_world_gets_a_page_saying_why(tmp_path, monkeypatch):
    """A chapter whose front matter names other world kinds (memories.worlds) is not executed: build_book writes
    a page with its title and why, and `memories run` refuses it with the same reason."""
    root = make_book_root(tmp_path / "book", {"01_a": PARAMS, "02_sd": PARAMS})
    source = root / "notebooks" / "02_sd.md"
    source.write_text(source.read_text().replace(
        "---\n", "---\nmemories:\n  worlds: [stable-diffusion]\n  elsewhere: \"It needs Stable Diffusion.\"\n", 1))
    ran = []
    monkeypatch.setattr(book.mathjax, "vendor_mathjax", lambda root: None)
    monkeypatch.setattr(book.build, "prepare_models", lambda profile, progress: None)
    monkeypatch.setattr(book.execute, "run_notebook", lambda chapter, *args: ran.append(chapter.name))
    monkeypatch.setattr(book.statistics, "write_statistics_page", lambda *args: None)
    monkeypatch.setattr(book.build.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(BookError("no html")))
    monkeypatch.setenv("MEMORIES_THREADS", "1")
    with pytest.raises(BookError, match="no html"):
        book.build_book("tiny", {}, root, progress=False)
    assert ran == ["01_a"]
    page = nbformat.read(str(root / book.EXECUTED_DIR / "02_sd.ipynb"), as_version=4)
    text = page.cells[0].source
    assert text.startswith("# Parameters\n") and "runs in a stable-diffusion world" in text  # its own title
    assert "built in a shapes world" in text and "It needs Stable Diffusion." in text
    chapter = next(c for c in book.chapters(root) if c.name == "02_sd")
    with pytest.raises(BookError, match="profile 'tiny' opens a shapes world. It needs Stable Diffusion."):
        book.execute_chapter(chapter, "tiny")
    assert book.toc.chapter_worlds(root / "notebooks" / "01_a.md") is None
