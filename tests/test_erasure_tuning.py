"""The erasure sweeps: the goal on planted numbers, sweep validation, and a sweep through the store on `tiny`."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from memories_lib.experiments import erasure_tuning as tuning
from memories_lib.experiments.erasure_tuning import GOAL, Goal, PromptTest, Sweep, PromptTestResult
from memories_lib.worlds import WorldError, open_world, retrained


@pytest.mark.parametrize(
    "erased, others, others_base, met",
    [
        (0.05, 0.80, 0.82, True),    # below 10%, others lose 2 points
        (0.10, 0.80, 0.82, False),   # 10% is not below 10%
        (0.09, 0.76, 0.82, False),   # others lose 6 points
        (0.09, 0.77, 0.82, True),    # exactly 5 points is within 5
        (0.00, 0.95, 0.82, True),    # others may improve
        (float("nan"), 0.9, 0.9, False),
    ],
)
def test_goal_on_planted_numbers(erased, others, others_base, met):
    assert GOAL.met(erased, others, others_base) is met


def test_goal_can_be_stricter():
    assert not Goal(erased_below=0.02).met(0.05, 0.9, 0.9)
    assert "fewer than 10%" in GOAL.describe() and "within 5 points" in GOAL.describe()


def test_test_result_reads_erased_and_others():
    r = PromptTestResult("triangle", {"triangle": 0.05, "circle": 0.8, "star": 0.6},
                   {"triangle": 0.9, "circle": 0.8, "star": 0.7})
    assert r.erased == 0.05 and r.others == pytest.approx(0.7) and r.others_base == pytest.approx(0.75)
    assert r.passes  # 0.70 >= 0.75 - 0.05
    assert r.largest_loss == ("star", pytest.approx(0.1))
    assert not PromptTestResult("triangle", {"triangle": 0.05, "circle": 0.6, "star": 0.6},
                          {"triangle": 0.9, "circle": 0.8, "star": 0.7}).passes


def test_sweep_values_must_increase_and_not_be_fixed():
    assert Sweep("uce", "uce", "erase_scale", [1, 2, 4]).params(2) == {"erase_scale": 2}
    with pytest.raises(ValueError, match="must increase"):
        Sweep("uce", "uce", "erase_scale", [4, 2])
    with pytest.raises(ValueError, match="must increase"):
        Sweep("uce", "uce", "erase_scale", [1, 1])
    with pytest.raises(ValueError, match="no values"):
        Sweep("uce", "uce", "erase_scale", [])
    with pytest.raises(ValueError, match="both varies and fixes"):
        Sweep("uce", "uce", "erase_scale", [1], {"erase_scale": 2})
    with pytest.raises(ValueError, match="unknown key"):
        Sweep.from_mapping("uce", {"method": "uce", "strength": "erase_scale", "values": [1], "step": 2})


def test_a_sweep_describes_its_values_and_fixed_settings():
    assert Sweep("uce", "uce", "erase_scale", [0.003, 0.1, 1]).describe() == "uce: erase scale 0.003, 0.1, 1"
    sweep = Sweep("esd-x", "esd-x", "iterations", [50, 100], {"lr": 5e-4, "ddim_steps": 20, "token": ["a", "b"]})
    assert sweep.describe() == "esd-x: iterations 50, 100; lr 0.0005, ddim steps 20, token a, b"


def test_closest_on_one_training_prefers_the_goal_then_the_others():
    table = pd.DataFrame({
        "erased": [0.30, 0.05, 0.05, 0.12],
        "others": [0.85, 0.70, 0.80, 0.84],
        "others_base": [0.85] * 4,
    }, index=[1, 2, 4, 8])
    assert tuning.closest_on_every_training({0: table}) == 4            # meets the goal
    assert tuning.closest_on_every_training({0: table.drop(index=4)}) == 8  # 2 points short of erased only


def test_closest_on_every_training_minimises_the_worst_shortfall():
    def frame(rows):
        return pd.DataFrame(rows, columns=["value", "erased", "others", "others_base"]).set_index("value")

    seed0 = frame([(1, 0.00, 0.84, 0.85), (2, 0.00, 0.70, 0.85), (4, 0.30, 0.85, 0.85)])
    seed1 = frame([(1, 0.02, 0.70, 0.85), (2, 0.00, 0.78, 0.85), (4, 0.00, 0.60, 0.85)])
    # 1: worst shortfall 0.10 (seed 1); 2: 0.10 (seed 0) and 0.02, tie broken by the others' mean (0.74 vs 0.77)
    assert tuning.closest_on_every_training({0: seed0, 1: seed1}) == 1
    assert GOAL.shortfall(0.05, 0.80, 0.82) == 0 and GOAL.shortfall(0.15, 0.70, 0.82) == pytest.approx(0.05 + 0.07)
    with pytest.raises(ValueError, match="every training"):
        tuning.closest_on_every_training({0: seed0, 1: frame([(8, 0.0, 0.8, 0.8)])})


def test_sweep_summary_over_trainings_with_a_sweep_left_unmeasured():
    """Chapter 3's table: a sweep measured on one training only is "not measured" (it made the chapter fail
    when a profile's other sweeps had not been run), a value passes only if it passes on every training."""
    sweeps = [Sweep("a", "uce", "erase_scale", [1, 2]), Sweep("b", "uce", "erase_scale", [1, 2], {"token": "all"})]

    def rows(sweep, concept, points):
        return [{"sweep": sweep, "concept": concept, "value": v, "erased": e, "others": o, "others_base": 0.85,
                 "most_hurt": "x", "most_hurt_loss": 0.85 - o} for v, e, o in points]

    seed0 = pd.DataFrame(rows("a", "star", [(1, 0.05, 0.84), (2, 0.00, 0.83)])
                         + rows("a", "cross", [(1, 0.30, 0.85), (2, 0.00, 0.70)])
                         + rows("b", "star", [(1, 0.00, 0.85)]))
    seed1 = pd.DataFrame(rows("a", "star", [(1, 0.20, 0.85), (2, 0.00, 0.82)])
                         + rows("a", "cross", [(1, 0.40, 0.85), (2, 0.02, 0.75)]))
    summary = tuning.sweep_summary({0: seed0, 1: seed1}, sweeps, ["star", "cross"],
                                   chosen=lambda sweep, concept: 1 if sweep.name == "a" else None)
    star, cross = summary.loc["a", "star"], summary.loc["a", "cross"]
    assert star.measured and star.met and star.passing == [2] and star.closest is None
    assert star.at_setting == [True, False]                  # 1 passes on seed 0 only
    assert cross.measured and not cross.met and cross.closest == 2
    assert not summary.loc["b", "star"].measured and summary.loc["b", "star"].at_setting is None
    assert summary.loc["b", "cross"].closest is None and not summary.loc["b", "cross"].met
    assert summary.groupby(level="sweep", sort=False)["met"].sum().to_dict() == {"a": 1, "b": 0}


def test_profile_sweeps_are_checked_before_any_work():
    world = open_world("tiny")
    sweeps = tuning.profile_sweeps(world)
    assert [s.name for s in sweeps] == ["uce", "esd-x"]
    with pytest.raises(ValueError, match="no tuning sweep"):
        tuning.profile_sweeps(world, ["fmn"])


def test_minis_book_models_are_points_of_its_sweeps():
    """mini's comment says its UCE and ESD models were chosen from the sweeps: each is a point of one of
    them, which chapter 3 rings in its trade-off figure (a setting off every sweep would not be drawn)."""
    from memories_lib.erasure import resolve_params
    from memories_lib.experiments.models import spec_of

    world = open_world("mini")
    sweeps = tuning.profile_sweeps(world)
    prompts = world.concept_prompts(world.profile.concepts[0])
    for name in ("uce", "esd-x", "esd-u"):
        spec = spec_of(world, name)
        chosen = resolve_params(spec.method, spec.params, prompts)
        on = [(s.name, v) for s in sweeps if s.method == spec.method for v in s.values
              if resolve_params(s.method, s.params(v), prompts) == chosen]
        assert len(on) == 1, (name, on)


def test_retrained_changes_the_training_seed_only():
    profile = open_world("tiny").profile
    other = retrained(profile, 5)
    assert open_world(other).training_seed() == 5 and open_world(profile).training_seed() == 0
    assert other.erased_models == profile.erased_models and other.name == "tiny-train5"


def test_retrained_needs_a_trained_world():
    import dataclasses

    from memories_lib.core.profile import WorldSection

    profile = open_world("tiny").profile
    untrained = dataclasses.replace(profile, world=WorldSection("stable-diffusion", {"model": "somewhere"}))
    with pytest.raises(WorldError, match="no training seed"):
        retrained(untrained, 1)


def test_sweep_through_the_store(tmp_path, monkeypatch):
    """Computed once; read back with compute off (nothing erased or generated again); bookkeeping right."""
    world = open_world("tiny")
    sweeps = [Sweep("uce", "uce", "erase_scale", [1, 4])]
    test = PromptTest.of(world, 3)
    assert tuning.sweep_table(world, sweeps, ["triangle"], test, compute=False, progress=False).empty
    table = tuning.sweep_table(world, sweeps, ["triangle"], test, progress=False)
    assert list(table["value"]) == [1, 4] and list(table["step"]) == [0, 1]
    for row in table.itertuples():
        assert 0 <= row.erased <= 1 and 0 <= row.others <= 1
        assert row.passes == GOAL.met(row.erased, row.others, row.others_base)
    import memories_lib.experiments.erasure_tuning as module

    def fail(*args, **kwargs):
        raise AssertionError("a stored point was computed again")

    monkeypatch.setattr(module, "erase", fail)
    monkeypatch.setattr(module, "prompt_test", fail)
    again = tuning.sweep_table(world, sweeps, ["triangle"], test, compute=False, progress=False)
    pd.testing.assert_frame_equal(again, table)
    # the point at the profile's own settings is the chapter's erased model's test
    direct = tuning.tested_point(world, "uce", "triangle", {"erase_scale": 1.0}, test, compute=False)
    assert direct is not None and math.isclose(direct.erased, table["erased"].iloc[0])


def test_prompt_test_uses_the_same_seeds_for_every_model(monkeypatch):
    """A model with other weights is judged on exactly the base model's prompts and seeds, one seed per label."""
    from memories_lib.core.models import load_ldm

    world = open_world("tiny")
    test = PromptTest.of(world, 2)
    base = world.base_model()
    other = load_ldm(world.base_model_path())
    with torch.no_grad():
        param = next(other.unet.parameters())
        param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(9)))
    other.invalidate_hash()
    assert other.weights_hash() != base.weights_hash()
    calls = []
    judged_generations_many = tuning.judged_generations_many

    def spy(ldm, detector, requests, **kwargs):
        calls.append((ldm, [(list(prompts), seed) for prompts, seed in requests]))
        return judged_generations_many(ldm, detector, requests, **kwargs)

    monkeypatch.setattr(tuning, "judged_generations_many", spy)
    result = tuning.prompt_test(world, other, "triangle", test)
    assert len(calls) == 2 and calls[0][0] is other and calls[1][0] is base
    assert calls[0][1] == calls[1][1]
    assert len({seed for _, seed in calls[0][1]}) == len(calls[0][1]) == len(result.accuracies)
    assert set(result.accuracies) == {"triangle", *world.rivals("triangle")}
    again = tuning.prompt_test(world, base, "triangle", test)
    assert dict(again.accuracies) == dict(again.base_accuracies)  # the base model against itself


def test_prompt_test_validates():
    with pytest.raises(ValueError, match="n >= 1"):
        PromptTest(0, 0, 10, 1.0)
    with pytest.raises(ValueError, match="num_steps"):
        PromptTest(2, 0, 0, 1.0)
