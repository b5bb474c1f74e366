"""Comparing a chapter's numbers across trainings of the world (``memories trainings``)."""

from __future__ import annotations

import json

import pytest
import yaml

from memories_lib.book import trainings
from memories_lib.book.parameters import ParameterError
from memories_lib.book.toc import BookError
from memories_lib.core.profile import load_profile

from conftest import make_book_root
from sd_world import build_tiny_sd_world

PROBE = """\
# Probe

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"
```

```{code-cell} ipython3
from myst_nb import glue
from memories_lib.worlds import open_world

W = open_world(profile)
glue("training_seed", W.training_config["seed"], display=False)
glue("constant", 2.5, display=False)
glue("word", "text values are left out", display=False)
glue("flag", True, display=False)
```
"""


def test_variant_changes_only_the_training_seed(tmp_path):
    path = trainings.variant("tiny", 3, tmp_path)
    raw, original = yaml.safe_load(path.read_text()), yaml.safe_load(trainings.profile_path("tiny").read_text())
    assert raw["world"]["training"] == {**original["world"]["training"], "seed": 3}
    assert raw["name"] == "tiny-train3"
    assert {k: v for k, v in raw.items() if k not in ("world", "name", "description")} == \
        {k: v for k, v in original.items() if k not in ("world", "name", "description")}
    assert trainings.fingerprint(load_profile(path)) == trainings.fingerprint(load_profile("tiny"))
    assert trainings.fingerprint(load_profile("mini")) != trainings.fingerprint(load_profile("tiny"))


def test_fingerprint_follows_the_resolved_training_config(monkeypatch):
    """A comparison made before a preset's default changed is not shown as this profile's."""
    from memories_lib.worlds.shapes import config

    before = trainings.fingerprint(load_profile("tiny"))
    tiny = {**config.PRESETS["tiny"], "classifier": {**config.PRESETS["tiny"]["classifier"], "steps": 4}}
    monkeypatch.setitem(config.PRESETS, "tiny", tiny)
    assert trainings.fingerprint(load_profile("tiny")) != before


def test_a_world_without_training_has_no_seed_to_vary(tmp_path):
    profile = build_tiny_sd_world(tmp_path / "sd")
    with pytest.raises(BookError, match="not trained by this project"):
        trainings.variant(profile, 1, tmp_path / "out")


def test_compare_trainings_executes_every_seed_and_keeps_numbers(tmp_path):
    root = make_book_root(tmp_path / "book", {"01_probe": PROBE})
    with pytest.raises(ParameterError, match="other than the profile's own"):
        trainings.compare_trainings("tiny", [0], ["01_probe"], root, progress=False)
    path = trainings.compare_trainings("tiny", [1], ["01_probe"], root, progress=False)
    result = json.loads(path.read_text())
    assert result["seeds"] == ["0", "1"]
    assert result["chapters"]["01_probe"] == {
        "training_seed": {"0": 0.0, "1": 1.0},
        "constant": {"0": 2.5, "1": 2.5},
    }, "numbers glued by every training are kept, text and booleans are not"
    assert trainings.load_comparison("tiny", root) == result
    assert trainings.load_comparison("mini", root) is None
