"""The developer scripts under tools/: what they do without their heavy inputs.

``tools/check_official_renoise.py``, ``check_official_nti.py`` and ``check_official_distance.py``
need a checkout of the official code (the first two also the trained mini world); here only their
refusal of a folder that holds no official code is checked, which must come before any model is
loaded or anything computed (a second or so).
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


#: Each script, a file of the official tree it needs, and the one a partial tree lacks (paths under src).
CHECKS = {
    "check_official_nti.py": ("memory_of_an_ablated_concept.py", "src/nti.py"),
    "check_official_distance.py": (None, "src/analyze_latents.py"),
}


@pytest.mark.parametrize("layout", ["missing", "empty", "partial"])
@pytest.mark.parametrize("script", sorted(CHECKS))
def test_check_official_scripts_refuse_a_folder_without_the_official_code(tmp_path, script, layout):
    official = tmp_path / "official"
    if layout != "missing":
        (official / "src").mkdir(parents=True)
    present, expected_missing = CHECKS[script]
    if layout == "partial" and present is not None:  # the official tree without the code the script imports
        (official / "src" / present).write_text("")
    result = subprocess.run([sys.executable, str(REPO / "tools" / script), "--official", str(official)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert str(official) in result.stderr
    expected = "no such folder" if layout == "missing" else expected_missing
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
