"""The verdict of chapter 4 on planted results tables: what it may and may not say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memories_lib.experiments.verdict import (PAPER_LARGEST_RD, TEST_TOPIC, add_vanilla_differences, results_tables,
                                              verdict)


def row(model, concept, acc, psnr, w2_50=1.5, rd_emd=1.2, unstable=False, n_e=8, diverged=0, **extra):
    return {"method": model, "concept": concept, "prompt_accuracy": acc, "psnr": psnr, "ref_psnr": 26.0,
            "n_e": n_e, "diverged": diverged, "rd_emd": rd_emd, "rd_w2_50": w2_50, "rd_w2_50_low": w2_50 * 0.8,
            "rd_w2_50_high": w2_50 * 1.3, "unstable": unstable, "rd_ctrl_emd": rd_emd * 1.5,
            "detected": 0.5, **extra}


def table(*rows):
    return pd.DataFrame(list(rows)).set_index(["method", "concept"])


def test_all_erased_below_ten_percent_and_regenerating_is_called_unreachable_by_name():
    v = verdict(table(row("vanilla", "star", 0.9, 27.0, w2_50=1.0, rd_emd=1.0),
                      row("uce", "star", 0.05, 26.5, w2_50=2.1, rd_emd=1.45),
                      row("esd", "star", 0.0, 25.5, w2_50=1.2, rd_emd=1.1)))
    assert v.held == [("uce", "star"), ("esd", "star")] and v.not_held == []
    assert v.unreachable == [("uce", "star"), ("esd", "star")]
    text = v.markdown()
    assert "no longer reachable from its name" in text and "cannot be said" not in text
    likelihood = v.finding("Likelihood")
    assert likelihood.data["below"] == 2 and likelihood.data["largest_w2_50"] == 2.1
    assert f"paper's {PAPER_LARGEST_RD}" in likelihood.text and "uce on star" in likelihood.text
    assert "+0.45" in text  # erased minus vanilla of the EMD ratio
    assert "nan" not in text.lower()


def test_a_model_above_ten_percent_is_named_and_not_called_unreachable():
    v = verdict(table(row("vanilla", "star", 0.9, 27.0),
                      row("uce", "star", 0.05, 26.5),
                      row("esd", "star", 0.35, 26.8)))
    assert v.not_held == [("esd", "star")] and v.unreachable == [("uce", "star")]
    together = v.finding("Together").text
    assert "For uce on star" in together and "cannot be said of esd on star" in together
    assert "35%" in v.finding(TEST_TOPIC).text


def test_a_model_that_loses_the_other_concepts_fails_the_prompt_test_and_is_left_out():
    """With the prompt test's columns, a pair below 10% that took the other concepts down fails; its
    numbers stay in the tables and out of the regeneration and likelihood reading."""
    test = {"others_base": 0.85}
    v = verdict(table(row("vanilla", "star", 0.9, 27.0, others_accuracy=0.85, passes=np.nan, **test),
                      row("uce", "star", 0.05, 26.5, w2_50=2.1, others_accuracy=0.83, passes=True, **test),
                      row("esd", "star", 0.02, 26.8, w2_50=9.0, others_accuracy=0.55, passes=False, **test)))
    assert v.held == [("uce", "star")] and v.not_held == [("esd", "star")]
    assert v.unreachable == [("uce", "star")]
    prompt = v.finding(TEST_TOPIC).text
    assert "1 of 2 erased pairs pass" in prompt and "esd on star (others 55% against 85%)" in prompt
    likelihood = v.finding("Likelihood")
    assert likelihood.data["n"] == 1 and likelihood.data["largest_w2_50"] == 2.1  # esd's 9.0 is not read
    assert v.finding("Regeneration").data["gaps"].keys() == {("uce", "star")}
    assert "cannot be said of esd on star: they fail the prompt test" in v.finding("Together").text
    cells = results_tables(add_vanilla_differences(
        table(row("vanilla", "star", 0.9, 27.0, others_accuracy=0.85, passes=np.nan, **test),
              row("esd", "star", 0.02, 26.8, others_accuracy=0.55, passes=False, **test))))["models"]
    assert cells.loc[("esd", "star"), ["concept by name", "others by name", "prompt test"]].tolist() == [
        "2%", "55%", "FAILS"]
    assert cells.loc[("vanilla", "star"), ["concept by name", "others by name", "prompt test"]].tolist() == [
        "90%", "85%", "–"]


def test_no_erased_model_below_ten_percent_claims_nothing_unreachable():
    v = verdict(table(row("vanilla", "star", 0.9, 27.0), row("uce", "star", 0.5, 26.5)))
    assert v.unreachable == [] and "no longer reachable" not in v.markdown()


def test_no_claim_where_the_unerased_model_does_not_draw_the_concept_by_name_either():
    v = verdict(table(row("vanilla", "star", 0.0, 27.0), row("vanilla", "triangle", 0.8, 27.0),
                      row("uce", "star", 0.0, 26.5), row("uce", "triangle", 0.0, 26.5)))
    assert v.uninformative == [("uce", "star")] and v.unreachable == [("uce", "triangle")]
    assert "No claim of unreachability is made for uce on star" in v.finding("Together").text


def test_without_vanilla_regeneration_is_read_against_the_models_own_reference():
    v = verdict(table(row("uce", "star", 0.0, 25.0), row("uce", "triangle", 0.0, 20.0)))
    assert v.persists == [("uce", "star")]  # 25 >= 26 - 2; 20 is not
    regeneration = v.finding("Regeneration").text
    assert "no unerased model in this run" in regeneration and "unerased model draws" not in v.markdown()
    together = v.finding("Together").text
    assert "uce on triangle" in together and "within 2 dB either" in together and "is not checked" in together
    with_diff = add_vanilla_differences(table(row("uce", "star", 0.0, 25.0)))
    assert np.isnan(with_diff["rd_emd_minus_vanilla"]).all()


def test_a_row_whose_seeds_all_diverged_is_named_and_not_judged():
    nan = float("nan")
    v = verdict(table(row("vanilla", "star", 0.9, 27.0),
                      row("uce", "star", 0.0, nan, w2_50=nan, rd_emd=nan, n_e=0, diverged=8),
                      row("esd", "star", 0.0, 26.0, diverged=1)))
    assert v.no_seeds == [("uce", "star")] and v.unreachable == [("esd", "star")]
    diverged = v.finding("Diverged seeds")
    assert diverged.data["diverged"] == 9 and "uce on star" in diverged.text
    assert "nan" not in v.markdown().lower()
    assert v.finding("Likelihood").data["n"] == 1


def test_unstable_rows_are_named_and_left_out_of_the_likelihood_reading():
    v = verdict(table(row("vanilla", "star", 0.9, 27.0),
                      row("uce", "star", 0.0, 26.5, w2_50=40.0, unstable=True),
                      row("esd", "star", 0.0, 26.5, w2_50=1.8)))
    assert v.unstable == [("uce", "star")]
    likelihood = v.finding("Likelihood")
    assert likelihood.data["largest_w2_50"] == 1.8 and "within the noise" in likelihood.text


def test_a_table_without_the_needed_columns_is_refused():
    with pytest.raises(ValueError, match="rd_w2_50"):
        verdict(table(row("uce", "star", 0.0, 25.0)).drop(columns=["rd_w2_50"]))
    with pytest.raises(ValueError, match="indexed"):
        verdict(pd.DataFrame([row("uce", "star", 0.0, 25.0)]))


def test_vanilla_differences_are_per_concept():
    t = add_vanilla_differences(table(row("vanilla", "star", 0.9, 27.0, rd_emd=1.0),
                                      row("vanilla", "triangle", 0.9, 27.0, rd_emd=2.0),
                                      row("uce", "star", 0.0, 26.0, rd_emd=1.5),
                                      row("uce", "triangle", 0.0, 26.0, rd_emd=1.5)))
    assert t["rd_emd_minus_vanilla"].tolist() == [0.0, 0.0, 0.5, -0.5]


def test_results_tables_have_no_nan_or_booleans_and_fit_the_page():
    from memories_lib.experiments.verdict import results_tables

    nan = float("nan")
    extra = dict(vae_psnr=30.0, nll=23300.0, ref_nll=23250.0, rd_emd_low=1.0, rd_emd_high=1.5, rd_w2=1.4,
                 rd_w2_low=1.1, rd_w2_high=1.9, rd_w2_1000=1.45, rd_w2_1000_low=1.4, rd_w2_1000_high=1.5,
                 emd_rn_sigma=0.8, similarity=0.21, similarity_original=0.25, diverged_e=0, diverged_r=0,
                 diverged_c=0, rd_ctrl_emd_low=1.0, rd_ctrl_emd_high=2.0)
    t = table(row("vanilla", "star", 0.9, 27.0, **extra),
              row("uce", "star", 0.0, 26.0, unstable=True, **{**extra, "diverged_e": 1}, ),
              row("esd", "star", 0.0, nan, w2_50=nan, rd_emd=nan, n_e=0, diverged=4,
                  **{**extra, "emd_rn_sigma": nan, "similarity": nan, "diverged_e": 4}))
    t.loc[("uce", "star"), "diverged"] = 1
    tables = results_tables(t)
    assert set(tables) == {"models", "regeneration", "distances", "official"}
    for frame in tables.values():
        assert frame.shape[1] <= 9
        cells = frame.to_numpy().ravel().tolist()
        assert all(isinstance(c, str) and c for c in cells)
        assert not any(bad in c for c in cells for bad in ("nan", "True", "False", "None"))
    assert tables["distances"].loc[("uce", "star"), "EMD(R,N) [σ]"] == "0.80σ, within noise"
    assert tables["regeneration"].loc[("uce", "star"), "diverged"] == "1 (E 1)"
    assert tables["models"].loc[("esd", "star"), "PSNR E [dB]"] == "–"
    assert tables["distances"].loc[("uce", "star"), "d(E,R) EMD [95% CI]"] == "1.20 [1.00, 1.50]"


def test_the_unerased_models_ranges_cover_the_judged_concepts_only():
    """The unerased model's PSNR and detection beside the erased pairs' are read on the same concepts: its
    triangle (no erased pair judged there) stays out of the sentence."""
    v = verdict(table(row("vanilla", "star", 0.9, 31.0, detected=0.9),
                      row("vanilla", "triangle", 0.9, 19.0, detected=0.2),
                      row("uce", "star", 0.0, 27.0),
                      row("uce", "triangle", 0.5, 18.0)), official_samples=20)
    regeneration = v.finding("Regeneration").text
    assert "against 31.0 dB for the unerased model on the same concepts" in regeneration
    assert "19.0" not in regeneration and "(90% for the unerased model's on the same concepts)" in regeneration
    assert "against 20 N(0, I) samples" in v.finding("Likelihood").text
