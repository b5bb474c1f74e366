"""The developer scripts under tools/: what they do without their heavy inputs.

``tools/check_official_renoise.py`` needs a checkout of the official code and the trained mini world;
here only its refusal of a folder that holds no official code is checked, which must come before any
model is loaded (a second or so).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK_OFFICIAL_RENOISE = REPO / "tools" / "check_official_renoise.py"


def run_check(official: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK_OFFICIAL_RENOISE), "--official", str(official)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("layout", ["missing", "empty", "partial"])
def test_check_official_renoise_refuses_a_folder_without_the_official_code(tmp_path, layout):
    official = tmp_path / "official"
    if layout != "missing":
        official.mkdir()
    if layout == "partial":  # the official tree with its ReNoise inversion missing
        (official / "src" / "renoise").mkdir(parents=True)
        (official / "src" / "renoise" / "main.py").write_text("")
    result = run_check(official)
    assert result.returncode == 2, result.stderr
    assert str(official) in result.stderr
    expected = "no such folder" if layout == "missing" else "src/renoise/renoise_inversion.py"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
