"""One direction of dependencies: the import-linter contract holds, covers every part of the library,
and no chapter but the embedded-world one reaches into the shapes world."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def test_import_contract_is_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_part_of_the_library_is_in_a_layer():
    package = REPO / "memories_lib"
    parts = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    parts |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    layered = {name.removeprefix("memories_lib.") for name in _layers()}
    assert parts <= layered, f"not in any layer of the contract: {sorted(parts - layered)}"


def test_only_the_embedded_world_chapter_imports_the_shapes_world():
    offenders = [
        path.name
        for path in sorted((REPO / "notebooks").glob("*.md"))
        if "embedded_world" not in path.name and re.search(r"memories_lib\.worlds\.shapes", path.read_text())
    ]
    assert not offenders, f"chapters must get their world through open_world: {offenders}"
