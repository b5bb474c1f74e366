"""The `memories` command: user errors are one line on stderr and a non-zero exit, before any work."""

from __future__ import annotations

import shlex
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import papermill
import pytest

from conftest import make_book_root, memories_command
from memories_lib import book, cli
from memories_lib.core.profile import PROFILES_DIR, list_profiles, load_profile

CHAPTER = """\
# A chapter

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile name
seed = 0  # seed
num_steps = 5  # steps
scale = 1.5  # a float
concepts = ["triangle"]  # concepts
extra = None  # anything
max_images: int | None = None  # an integer or None
```

```{code-cell} ipython3
print(profile, seed, num_steps, scale, concepts, extra, max_images)
```
"""

FAILING = """\
# A failing chapter

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile name
```

```{code-cell} ipython3
x = 1
```

```{code-cell} ipython3
y = x / 0
```
"""


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A book root with one chapter, as the working directory."""
    make_book_root(tmp_path, {"01_demo": CHAPTER, "02_fails": FAILING})
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if anything would execute a notebook, warm matplotlib, vendor MathJax, prepare models or run jupyter-book."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started although the arguments were invalid")

    monkeypatch.setattr(papermill, "execute_notebook", forbidden)
    monkeypatch.setattr(book.mathjax, "vendor_mathjax", forbidden)
    monkeypatch.setattr(book.build, "warm_matplotlib", forbidden)
    monkeypatch.setattr(book.build, "prepare_models", forbidden)
    monkeypatch.setattr(book.build, "_jupyter_book", forbidden)


@pytest.fixture
def fake_papermill(monkeypatch):
    """Record what papermill would be asked to run, and write a stand-in executed notebook."""
    calls = []

    def execute_notebook(input_path, output_path, parameters=None, **kwargs):
        calls.append({"input": input_path, "output": output_path, "parameters": parameters, **kwargs})
        nbformat.write(nbformat.v4.new_notebook(), output_path)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, f"expected one line on stderr, got: {err}"
    assert err[0].startswith("memories: error: ")
    assert "Traceback" not in err[0]
    return err[0]


def test_default_profile_is_one_of_the_shipped_ones():
    assert cli.DEFAULT_PROFILE in list_profiles()


def test_profiles_lists_every_profile(capsys):
    assert cli.main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in list_profiles():
        assert f"{name}" in out
        assert load_profile(name).description in out


def test_run_unknown_parameter_fails_before_work(root, no_work, capsys):
    assert cli.main(["run", "01_demo", "-p", "num_step", "3"]) == cli.EXIT_USAGE
    line = _one_error_line(capsys)
    assert "'num_step'" in line and "01_demo.md" in line
    for allowed in ("seed", "num_steps", "scale", "concepts", "max_images"):
        assert allowed in line
    assert not (root / "_executed").exists()


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("num_steps", "abc", "must be an integer"),
        ("num_steps", "2.5", "must be an integer"),
        ("num_steps", "true", "must be an integer"),
        ("scale", "fast", "must be a number"),
        ("concepts", "star", "must be a list"),
        ("seed", "[1, 2]", "must be an integer"),
        ("max_images", "abc", "must be an integer or None"),
        ("max_images", "2.5", "must be an integer or None"),
        ("max_images", "[1]", "must be an integer or None"),
    ],
)
def test_run_wrong_type_fails_before_work(root, no_work, capsys, name, value, expected):
    assert cli.main(["run", "01_demo", "-p", name, value]) == cli.EXIT_USAGE
    line = _one_error_line(capsys)
    assert f"'{name}'" in line and expected in line and "01_demo.md" in line


def test_run_unknown_profile_fails_before_work(root, no_work, capsys):
    assert cli.main(["run", "01_demo", "--profile", "no-such-world"]) == cli.EXIT_USAGE
    assert "unknown profile 'no-such-world'" in _one_error_line(capsys)


def test_profile_cannot_be_a_parameter(root, no_work, capsys):
    assert cli.main(["run", "01_demo", "-p", "profile", "tiny"]) == cli.EXIT_USAGE
    assert "--profile" in _one_error_line(capsys)


def test_run_unknown_chapter(root, no_work, capsys):
    assert cli.main(["run", "99_nothing"]) == cli.EXIT_FAILED
    line = _one_error_line(capsys)
    assert "99_nothing" in line and "01_demo" in line


def test_book_unknown_parameter_fails_before_work(root, no_work, capsys):
    assert cli.main(["book", "-p", "num_imgs", "8"]) == cli.EXIT_USAGE
    line = _one_error_line(capsys)
    assert "num_imgs" in line and "num_steps" in line


def test_book_wrong_type_fails_before_work(root, no_work, capsys):
    assert cli.main(["book", "-p", "num_steps", "many"]) == cli.EXIT_USAGE
    assert "must be an integer" in _one_error_line(capsys)
    assert cli.main(["book", "-p", "max_images", "abc"]) == cli.EXIT_USAGE
    line = _one_error_line(capsys)
    assert "'max_images'" in line and "must be an integer or None" in line


@pytest.mark.parametrize("value, expected", [("5", 5), ("null", None)])
def test_run_annotated_parameter_accepts_its_type_and_none(root, fake_papermill, value, expected):
    assert cli.main(["run", "01_demo", "-q", "--profile", "tiny", "-p", "max_images", value]) == 0
    params = fake_papermill[0]["parameters"]
    assert params["max_images"] == expected and type(params["max_images"]) is type(expected)


def test_run_passes_yaml_parsed_values_and_profile_defaults(root, fake_papermill, capsys):
    out = root / "out" / "demo.ipynb"
    code = cli.main(["run", "01_demo", "-q", "--profile", "tiny", "-p", "concepts", '["star", "circle"]', "-p", "scale", "2",
                     "-p", "extra", "{a: 1}", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    (call,) = fake_papermill
    params = call["parameters"]
    assert params["profile"] == "tiny"
    assert params["concepts"] == ["star", "circle"]
    assert params["scale"] == 2.0 and isinstance(params["scale"], float)
    assert params["extra"] == {"a": 1}
    # tiny.yaml sets num_steps, which this chapter declares; it sets num_images, which it does not
    assert params["num_steps"] == load_profile("tiny").parameters["num_steps"]
    assert "num_images" not in params
    assert call["kernel_name"] == "python3" and call["cwd"] == str(root)
    assert call["output"] == str(out) and out.is_file()


def test_the_default_profile_is_the_embedded_shapes_world(root, fake_papermill):
    assert cli.DEFAULT_PROFILE == "mini"
    assert cli.main(["run", "01_demo", "-q"]) == 0
    assert fake_papermill[0]["parameters"]["profile"] == "mini"


def test_override_beats_profile_default(root, fake_papermill):
    assert cli.main(["run", str(root / "notebooks" / "01_demo.md"), "-q", "--profile", "tiny",
                     "-p", "num_steps", "20"]) == 0
    assert fake_papermill[0]["parameters"]["num_steps"] == 20
    assert fake_papermill[0]["output"] == str(root / "_executed" / "01_demo.ipynb")


def test_profile_given_as_a_path_reaches_the_notebook_as_an_absolute_path(root, fake_papermill, tmp_path):
    custom = tmp_path / "variants" / "my.yaml"
    custom.parent.mkdir()
    custom.write_text((PROFILES_DIR / "tiny.yaml").read_text())
    assert cli.main(["run", "01_demo", "-q", "--profile", "variants/my.yaml"]) == 0
    assert fake_papermill[0]["parameters"]["profile"] == str(custom.resolve())


def test_failed_cell_is_one_line_naming_notebook_and_cell(root, capsys):
    assert cli.main(["run", "02_fails", "-q"]) == cli.EXIT_FAILED
    line = _one_error_line(capsys)
    assert "02_fails.md" in line and "ZeroDivisionError" in line and "y = x / 0" in line
    assert (root / "_executed" / "02_fails.ipynb").is_file(), "the executed copy is kept for inspection"


def test_train_mini_forwards_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("memories_lib.worlds.shapes.training.cli")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "memories_lib.worlds.shapes.training.cli", fake)
    assert cli.main(["train-mini", "--steps", "3", "--help"]) == 0
    assert seen == [["--steps", "3", "--help"]]


def test_usage_error_returns_instead_of_exiting(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "usage" in capsys.readouterr().err


def test_console_script_reports_user_errors_without_traceback(root):
    done = subprocess.run([*memories_command(), "run", "01_demo", "-p", "bogus", "1"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.EXIT_USAGE
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("memories: error: unknown parameter 'bogus'")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sweeps", "fmn"], "no tuning sweep"),
        (["--concepts", "hexagon"], "unknown concept"),
        (["-n", "0"], "-n must be at least 1"),
    ],
)
def test_tune_erasure_refuses_bad_input_before_work(monkeypatch, capsys, argv, message):
    import memories_lib.experiments.erasure_tuning as tuning

    monkeypatch.setattr(tuning, "run_tuning", lambda *a, **k: pytest.fail("work started"))
    assert cli.main(["tune-erasure", "--profile", "tiny", *argv]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_tune_erasure_prints_every_point(capsys):
    assert cli.main(["tune-erasure", "--profile", "tiny", "--sweeps", "uce", "--concepts", "star", "-n", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "world trained with seed 0" in out and out.count("star") == 2 and "2 points" in out


def test_tune_erasure_prints_small_strengths_as_given(monkeypatch, capsys):
    """A strength of 0.003 is printed as 0.003 (it read "0.0" under the accuracies' one decimal)."""
    import pandas as pd

    import memories_lib.experiments.erasure_tuning as tuning

    row = {"sweep": "uce", "method": "uce", "strength": "erase_scale", "value": 0.003, "step": 0, "concept": "star",
           "erased": 0.5, "others": 0.8, "erased_base": 0.9, "others_base": 0.85, "passes": False,
           "most_hurt": "cross", "most_hurt_loss": 0.125}
    monkeypatch.setattr(tuning, "run_tuning", lambda *a, **k: {0: pd.DataFrame([row])})
    assert cli.main(["tune-erasure", "--profile", "tiny", "-q"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.split()[:1] == ["uce"]][0]
    assert line.split() == ["uce", "0.003", "star", "50.0", "80.0", "85.0", "False", "cross", "12.5"]


def test_check_book_without_a_built_book_names_what_to_run(root, capsys):
    assert cli.main(["check-book", "--root", str(root), "--html", str(root / "nowhere")]) == cli.EXIT_FAILED
    assert "no built book" in capsys.readouterr().err


def test_check_book_prints_every_problem_and_fails(root, monkeypatch, capsys, tmp_path):
    from memories_lib.book import reader

    (tmp_path / "index.html").write_text("<html><body></body></html>")
    found = [reader.Problem("_executed/a.html", "cell", 'a table cell reads "NaN"')]
    monkeypatch.setattr(reader, "check_book", lambda root, html, pages: found)
    assert cli.main(["check-book", "--root", str(root), "--html", str(tmp_path)]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert '_executed/a.html: [cell] a table cell reads "NaN"' in captured.out
    assert "1 problem on 1 of" in captured.err


REPO = Path(__file__).resolve().parents[1]


def _documented_runs() -> list[tuple[str, list[str]]]:
    """Every `memories run ...` command the README, the book's pages and the chapters show, as argv."""
    runs = []
    for page in [REPO / "README.md", *sorted((REPO / "book").glob("*.md")), *sorted((REPO / "notebooks").glob("*.md"))]:
        for line in page.read_text().splitlines():
            for marker in ("bin/memories run ", "memories_lib.cli run "):
                if marker in line:
                    command = line.split(marker, 1)[1].split("`", 1)[0].split(" #", 1)[0]
                    runs.append((f"{page.name}: {line.strip()}", ["run", *shlex.split(command)]))
    return runs


def test_every_documented_run_command_names_a_chapter_and_its_parameters(monkeypatch, tmp_path):
    """A command shown to readers must run: its chapter exists, its -p names are declared with values of their type."""
    monkeypatch.setenv("MEMORIES_SD14", str(tmp_path))  # sd14's paths are only read when its world opens
    runs = _documented_runs()
    assert len(runs) >= 8, runs  # the README and reproduce.md show several
    for where, argv in runs:
        args = cli.build_parser().parse_args(argv)
        chapter = book.resolve_chapter(REPO, args.notebook)
        try:
            book.chapter_parameters(chapter, args.profile, cli._overrides(args.parameter))
        except book.ParameterError as err:
            pytest.fail(f"{where}: {err}")
