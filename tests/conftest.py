"""Shared fixtures: a private cache for the whole session, and the book built once with the tiny profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The user's cache, read before the tests point MEMORIES_CACHE elsewhere (only ever read, never written).
USER_CACHE = Path(os.environ.get("MEMORIES_CACHE") or Path.home() / ".cache" / "memories_lib")

# Never copied into a test copy of the repository: environments, caches and build products.
_NOT_COPIED = (".git", ".venv", "_build", "_executed", "_static", "__pycache__", ".pytest_cache",
               ".ipynb_checkpoints", "*.egg-info", "results")

NOTEBOOK_HEADER = textwrap.dedent(
    """\
    ---
    jupytext:
      text_representation:
        extension: .md
        format_name: myst
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---
    """
)


@pytest.fixture(scope="session", autouse=True)
def memories_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MEMORIES_CACHE points at a temporary folder for the whole session (never the user's cache)."""
    path = tmp_path_factory.mktemp("memories_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMORIES_CACHE", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def sd14_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MEMORIES_SD14 (the shipped sd14 profile's folder) points at an empty temporary folder: the profile loads,
    and a test that needs its files builds them there (``sd_world.build_sd14_layout``); never the user's data."""
    path = tmp_path_factory.mktemp("sd14")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMORIES_SD14", str(path))
        yield path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ldm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SD-layout model (VAE, UNet, CLIP text encoder, tokenizer, DDIM), built once."""
    from memories_lib.core.models import build_tiny_ldm

    return build_tiny_ldm(tmp_path_factory.mktemp("tiny-ldm") / "model", seed=0, image_size=32)


@pytest.fixture(scope="module")
def ldm(tiny_ldm_path: Path):
    """That model, loaded afresh for each test module (a module's tests share it; no module sees another's)."""
    from memories_lib.core.models import load_ldm

    return load_ldm(tiny_ldm_path)


def copy_repo(dest: Path, src: Path = REPO) -> Path:
    """Copy the project's files (tracked and untracked, not ignored) from ``src`` to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=src, capture_output=True, check=True,
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = None
    if listed is None:  # not a git checkout: copy everything but the build products
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        return dest
    for rel in filter(None, listed):
        source = src / rel
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def memories_command() -> list[str]:
    """The ``memories`` console script of this environment (or the module, if it is not installed)."""
    script = Path(sys.executable).parent / "memories"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "memories_lib.cli"]


def make_book_root(root: Path, notebooks: dict[str, str]) -> Path:
    """A minimal book root: a _toc.yml listing ``notebooks`` (name -> cell markdown) as executed chapters."""
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    (root / "book").mkdir(exist_ok=True)
    (root / "book" / "intro.md").write_text("# Intro\n")
    chapters = "\n".join(f"      - file: _executed/{name}" for name in notebooks)
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nparts:\n  - caption: Chapters\n    chapters:\n" + chapters + "\n"
    )
    for name, body in notebooks.items():
        (root / "notebooks" / f"{name}.md").write_text(NOTEBOOK_HEADER + "\n" + textwrap.dedent(body))
    return root


@dataclass
class BuiltBook:
    root: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def html(self) -> Path:
        return self.root / "_build" / "html"

    def failure(self) -> str:
        return f"memories book exited {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory, memories_cache: Path) -> BuiltBook:
    """`memories book --profile tiny`, run once in a temporary copy of the repository."""
    root = copy_repo(tmp_path_factory.mktemp("book") / "repo")
    tuned = subprocess.run(  # the erasure sweeps that chapter 3 reads from the store (not run by the book)
        [*memories_command(), "tune-erasure", "--profile", "tiny", "-q"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    if tuned.returncode:
        return BuiltBook(root=root, returncode=tuned.returncode, stdout=tuned.stdout, stderr=tuned.stderr)
    done = subprocess.run(
        [*memories_command(), "book", "--profile", "tiny", "-q"],
        cwd=root, capture_output=True, text=True, timeout=1200,
    )
    return BuiltBook(root=root, returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)
