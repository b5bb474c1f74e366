"""What the ``tools/check_official_*.py`` scripts share: the official checkout, and the mini world's inputs.

Each script checks one claim of the book against the official "Memories of Forgotten Concepts"
code (https://github.com/matanr/Memories_of_Forgotten_Concepts), imported from a checkout given
with ``--official DIR``; nothing of it is copied into this project. This module finds and
validates that checkout (:func:`official_source`, :class:`CheckError` for a bad one, which the
scripts turn into exit code 2 before any heavy work), reads its commit (:func:`official_commit`),
puts its ``src`` on ``sys.path`` without writing bytecode into it (:func:`use_official_source`),
installs stand-ins for packages the official modules import at the top but the checked code never
calls (:func:`stand_in`), checks that a module really came from the checkout
(:func:`check_imported_from`), and gives the scripts that run a model the world's model folder
(:func:`model_folder`, never building or training one) and its reference images
(:func:`reference_images`).

It is a helper of the scripts under ``tools/`` (they import it as ``official_checkout``, their own
folder being first on ``sys.path``), not part of :mod:`memories_lib`.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import torch

OFFICIAL_URL = "https://github.com/matanr/Memories_of_Forgotten_Concepts"


class CheckError(Exception):
    """A problem with the command line or the environment, found before any heavy work (exit code 2)."""


def official_source(folder: Path, files: Sequence[str], what: str) -> Path:
    """The ``src`` folder of an official checkout at ``folder`` that holds ``files`` (paths under ``src``).

    ``what`` names the code the files are (for the message). CheckError when the folder does not
    exist or lacks any of the files.
    """
    if not folder.is_dir():
        raise CheckError(f"--official {folder}: no such folder (clone {OFFICIAL_URL} there)")
    src = folder / "src"
    missing = [name for name in files if not (src / name).is_file()]
    if missing:
        raise CheckError(f"--official {folder}: not a checkout of {OFFICIAL_URL}, {what} is "
                         f"missing (no {', '.join('src/' + name for name in missing)})")
    return src


def official_commit(folder: Path) -> str:
    """The commit of the official checkout, or a note when ``folder`` is not a git checkout."""
    result = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown (not a git checkout)"


def use_official_source(src: Path) -> None:
    """Put ``src`` first on ``sys.path``; bytecode is not written (into the checkout or anywhere) from now on."""
    sys.dont_write_bytecode = True
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))


def stand_in(name: str, **attributes) -> bool:
    """Install a stand-in module ``name`` with ``attributes`` where the real one is not installed.

    For packages that an official module imports at the top for code the check never calls.
    Parent packages get stand-ins too where they are missing. Returns whether a stand-in was put in.
    """
    try:
        if importlib.util.find_spec(name) is not None:
            return False
    except ModuleNotFoundError:  # a parent package is missing
        pass
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            sys.modules[parent] = types.ModuleType(parent)
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    sys.modules[name] = module
    if len(parts) > 1:
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)
    return True


def check_imported_from(module: types.ModuleType, src: Path) -> None:
    """CheckError unless ``module`` was imported from a file under ``src`` (not an installed package)."""
    if not Path(module.__file__).resolve().is_relative_to(src.resolve()):
        raise CheckError(f"the module {module.__name__!r} was imported from {module.__file__}, not from {src}")


# --------------------------------------------------------------------------- the mini world's inputs


def model_folder(world, model: Path | None) -> Path:
    """``model``, or the world's base model from the cache (CheckError rather than building or training it)."""
    if model is not None:
        if not model.is_dir():
            raise CheckError(f"--model {model}: no such folder")
        return model
    if not world.is_prepared():
        raise CheckError(f"the world of profile {world.profile.name!r} is not in the cache (MEMORIES_CACHE): "
                         "build it first (`memories train-mini` for mini) or pass --model")
    return Path(world.base_model_path(progress=False))


def reference_images(world, n: int, seed: int) -> tuple["torch.Tensor", list, list[str]]:
    """``n`` reference images of the world: as 8-bit tensors in [0, 1], as PIL images, and their captions.

    Both sides get the same 8-bit pixels: the official code reads PIL images (``/ 255`` or
    ``/ 127.5 - 1`` in float32, as the project's tensors are made here).
    """
    from PIL import Image

    reference = world.reference_set(n, seed)
    pixels = (reference.images * 255).round().clamp(0, 255).byte()
    pil = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]
    return pixels.float() / 255, pil, list(reference.prompts)


# --------------------------------------------------------------------------- the scripts' command line


def argument_parser(doc: str, holds: str) -> argparse.ArgumentParser:
    """A script's parser (described by the first paragraph of ``doc``) with ``--official DIR``, a checkout holding ``holds``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, metavar="DIR",
                        help=f"a checkout of {OFFICIAL_URL} (the folder holding {holds})")
    return parser


def add_world_arguments(parser: argparse.ArgumentParser, images: int) -> None:
    """``--images``, ``--profile``, ``--model`` and ``--reference-seed``: the inputs of a check that runs a model."""
    parser.add_argument("--images", type=int, default=images, metavar="N",
                        help=f"reference images to invert (default {images})")
    parser.add_argument("--profile", default="mini", help="the profile whose world is used (default mini)")
    parser.add_argument("--model", type=Path, default=None, metavar="DIR",
                        help="a diffusers-layout model folder instead of the world's base model")
    parser.add_argument("--reference-seed", type=int, default=0, help="seed of the reference set (default 0)")


def check_world_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``args``, once its ``--images`` is checked (a usage error otherwise)."""
    if args.images < 1:
        parser.error("--images must be at least 1")
    return args


def open_world_check(args: argparse.Namespace, files: Sequence[str], what: str,
                     importer: Callable[[Path], Any]) -> tuple[Any, Any, Path]:
    """The imported official code (``importer`` of the checkout's ``src``), the world and its model folder.

    Everything that can be wrong with the checkout, the profile or the model raises CheckError here,
    before any model is loaded; the checkout's commit and the inputs are printed.
    """
    src = official_source(args.official, files, what)
    from memories_lib.worlds import open_world

    world = open_world(args.profile)
    model = model_folder(world, args.model)
    official = importer(src)
    print(f"official code: {args.official} at commit {official_commit(args.official)}")
    print(f"model: {model}; {args.images} reference images of {args.profile!r} (seed {args.reference_seed})")
    return official, world, model
