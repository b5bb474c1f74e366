"""The verdict of the concept-memory experiment: what a table of (model, concept) rows supports, in words.

:func:`verdict` is a pure function of the results table that chapter 4 builds (one row per model and
concept, the columns of :func:`~memories_lib.experiments.concept_memory.summarise` plus
``prompt_accuracy`` and, when measured, the regeneration scores ``detected`` and ``similarity``). It
returns structured findings and the markdown the chapter prints, so every number in the verdict is
computed from the table, and the rules below are tested on planted tables.

The rules:

* **The prompt test** (chapter "Erasing concepts"): a (model, concept) pair *passes* when the table's
  ``passes`` column says so (the erased concept in fewer than 10% of generations from prompts naming it
  and the other concepts of its kind within 5 points of the base model, see
  :mod:`~memories_lib.experiments.erasure_tuning`); a table without that column falls back to the first
  half, ``prompt_accuracy`` below :data:`ACCURACY_HELD` (10%). Pairs that fail are named, stay in the
  tables, and are left out of every statement below: the paper's claim is about models that pass.
* **The memory persists** for a pair when its regenerations from inverted seeds are within
  :data:`PSNR_TOLERANCE_DB` (2 dB) of the unerased model's on the same images, or, without the unerased
  model in the run, of the same model's regenerations of the reference set.
* "**No longer reachable from its name**" is said only of pairs where both hold and the unerased model,
  when in the run, does reach the concept by name (at least 10%); the verdict names the pairs where
  erasure by name does not hold (the claim does not apply), those where the unerased model does not
  reach the concept by name either (nothing was made unreachable), and those whose memory does not
  persist at that tolerance.
* **Likelihood** is compared with the paper like with like: the paper's numbers (largest 2.49, ESD on
  parachute, all below 2.5) come from the official code's distance, the squared 2-Wasserstein distance of
  fitted Gaussians against 50 N(0, I) samples, so they are compared with ``rd_w2_50`` (median over draws
  of 50, and its 5-95% range). The exact-EMD ratio is read on its own terms: squared distances make the
  W2 ratio roughly the square of the EMD ratio when the sets differ mostly in their means.
* Rows flagged ``unstable`` (EMD(R, N) within the noise floor of |R| genuine N(0, I) seeds) have a ratio
  driven by noise; they are named and left out of the likelihood statements.
* Rows without a single finite seed of E are named and left out of everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..core.tables import MISSING, interval, is_missing, number, percent, signed
from .concept_memory import OFFICIAL_SAMPLES
from .models import VANILLA

#: Erasure by name holds below this share of prompt generations showing the concept.
ACCURACY_HELD = 0.10
#: Regeneration within this many dB of the unerased model's counts as the memory persisting.
PSNR_TOLERANCE_DB = 2.0
#: The paper's largest relative distance (ESD on "parachute"), official W2 variant with 50 N(0, I) samples.
PAPER_LARGEST_RD = 2.49
#: The paper's bound on every relative distance it reports (same variant).
PAPER_BOUND_RD = 2.5

#: The title of the verdict's finding on the prompt test.
TEST_TOPIC = "The prompt test"

#: The ratios beside which the chapter reports "erased minus vanilla".
DIFFERENCE_COLUMNS = ("rd_emd", "rd_w2_50", "rd_ctrl_emd")

Pair = tuple[str, str]


@dataclass(frozen=True)
class Finding:
    """One statement of the verdict: its topic, its markdown text and the numbers behind it."""

    topic: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The findings in order, and the pairs each rule put where (model, concept)."""

    findings: list[Finding]
    held: list[Pair]            # passes the prompt test (or, without its columns, accuracy < 10%)
    uninformative: list[Pair]   # ... but the unerased model does not draw the concept by name either
    not_held: list[Pair]        # fails it: shown in the tables, left out of every reading
    persists: list[Pair]        # regenerations within the PSNR tolerance
    unreachable: list[Pair]     # held and persists: "no longer reachable from its name"
    no_seeds: list[Pair]        # no finite seed in E: not judged
    unstable: list[Pair]        # ratio denominators within noise

    def lines(self) -> list[str]:
        """The verdict as markdown bullet lines."""
        return [f"* **{f.topic}.** {f.text}" for f in self.findings]

    def markdown(self) -> str:
        return "\n".join(self.lines())

    def finding(self, topic: str) -> Finding:
        for f in self.findings:
            if f.topic == topic:
                return f
        raise KeyError(f"no finding {topic!r}; topics: {[f.topic for f in self.findings]}")


def add_vanilla_differences(table: pd.DataFrame, columns: Sequence[str] = DIFFERENCE_COLUMNS,
                            vanilla: str = VANILLA) -> pd.DataFrame:
    """``table`` with ``{column}_minus_vanilla`` for each of ``columns`` it has: a row's value minus the
    unerased model's on the same concept (NaN without a vanilla row for that concept; 0 on vanilla's rows)."""
    out = table.copy()
    for column in columns:
        if column not in out.columns:
            continue
        base = {c: out.loc[(m, c), column] for m, c in out.index if m == vanilla}
        out[f"{column}_minus_vanilla"] = [
            out.loc[(m, c), column] - base[c] if c in base else np.nan for m, c in out.index
        ]
    return out


def _pairs(index) -> str:
    return ", ".join(f"{m} on {c}" for m, c in index) or "none"


def _range(values: pd.Series, fmt: str = "{:.2f}") -> str:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return "–"
    lo, hi = fmt.format(values.min()), fmt.format(values.max())
    return lo if lo == hi else f"{lo} to {hi}"


def _vanilla_rows(table: pd.DataFrame, vanilla: str, pairs, column: str) -> pd.Series:
    """The unerased model's ``column`` on the concepts of ``pairs`` only (the pairs a statement judges)."""
    keys = [(vanilla, c) for c in dict.fromkeys(c for _, c in pairs) if (vanilla, c) in table.index]
    return table.loc[keys, column] if keys and column in table.columns else pd.Series(dtype=float)


def _get(row: pd.Series, name: str) -> float:
    value = row.get(name, np.nan)
    return float(value) if value is not None else np.nan


def verdict(table: pd.DataFrame, vanilla: str = VANILLA, official_samples: int = OFFICIAL_SAMPLES) -> Verdict:
    """The findings a results table supports (see the module docstring for the rules).

    ``official_samples``: the N(0, I) samples per draw behind ``rd_w2_50`` (as passed to
    :func:`~memories_lib.experiments.concept_memory.summarise`), named in the text. The unerased model's
    ranges beside the erased pairs' cover the concepts of the pairs judged only.

    ``table``: indexed by (model, concept), with at least ``prompt_accuracy``, ``psnr``, ``ref_psnr``,
    ``n_e``, ``diverged``, ``rd_emd``, ``rd_w2_50`` (+ ``_low``, ``_high``) and ``unstable``; optional:
    ``rd_ctrl_emd``, ``detected``, ``similarity``.
    """
    if not isinstance(table.index, pd.MultiIndex) or table.index.nlevels != 2:
        raise ValueError("the results table must be indexed by (model, concept)")
    missing = [c for c in ("prompt_accuracy", "psnr", "ref_psnr", "n_e", "diverged", "rd_emd", "rd_w2_50",
                           "rd_w2_50_low", "rd_w2_50_high", "unstable") if c not in table.columns]
    if missing:
        raise ValueError(f"the results table lacks the column(s) {missing}")
    table = add_vanilla_differences(table, vanilla=vanilla)
    findings: list[Finding] = []
    models = list(dict.fromkeys(m for m, _ in table.index))
    erasers = [m for m in models if m != vanilla]
    has_vanilla = vanilla in models
    erased = table.loc[[k for k in table.index if k[0] != vanilla]]

    # -- diverged seeds and rows without any
    no_seeds = [k for k in table.index if table.loc[k, "n_e"] == 0]
    total_diverged = int(table["diverged"].sum())
    if total_diverged or no_seeds:
        text = (f"{total_diverged} inverted image(s) had a non-finite or exploding seed and are left out of every "
                f"number (per row: the table's \"diverged\" column).")
        if no_seeds:
            text += f" No seed of the erased set is usable for {_pairs(no_seeds)}: those rows are not judged."
        findings.append(Finding("Diverged seeds", text, {"diverged": total_diverged, "no_seeds": no_seeds}))
    judged = erased.loc[[k for k in erased.index if k not in no_seeds]]

    # -- the prompt test: only the pairs that pass are read below
    accuracy = erased["prompt_accuracy"]
    measured = accuracy.dropna()
    has_test = "passes" in erased.columns
    if has_test:
        held = [k for k in measured.index if bool(erased.loc[k, "passes"])]
    else:
        held = [k for k in measured.index if measured[k] < ACCURACY_HELD]
    not_held = [k for k in measured.index if k not in held]
    # a low accuracy means nothing where the unerased model does not reach the concept by name either
    uninformative = [(m, c) for m, c in held if has_vanilla and (vanilla, c) in table.index
                     and not table.loc[(vanilla, c), "prompt_accuracy"] >= ACCURACY_HELD]

    if erasers:
        parts = []
        if has_vanilla:
            vanilla_accuracy = _range(table.loc[vanilla, "prompt_accuracy"] * 100, "{:.0f}")
            parts.append(f"The unerased model draws the concept in {vanilla_accuracy}% "
                         "of generations from prompts naming it.")
        parts.append(f"The erased models draw it in {_range(accuracy * 100, '{:.0f}')}%.")
        if has_test:
            def why(k: Pair) -> str:
                r = erased.loc[k]
                reasons = []
                if r["prompt_accuracy"] >= ACCURACY_HELD:
                    reasons.append(f"concept in {r['prompt_accuracy']:.0%}")
                if "others_accuracy" in r and r["others_accuracy"] < r.get("others_base", np.nan) - 0.05:
                    reasons.append(f"others {r['others_accuracy']:.0%} against {r['others_base']:.0%}")
                return f"{k[0]} on {k[1]} ({', '.join(reasons) or 'fails'})"

            parts.append(f"{len(held)} of {len(measured)} erased pairs pass the prompt test (the concept below "
                         f"{ACCURACY_HELD:.0%}, the other concepts of its kind within 5 points of the base model): "
                         f"{_pairs(held)}.")
            if not_held:
                parts.append("Failing, shown in the tables but left out of everything below: "
                             + "; ".join(why(k) for k in not_held) + ".")
        else:
            parts.append(f"Erasure by name holds (below {ACCURACY_HELD:.0%}) for {_pairs(held)}"
                         + (f"; it does not for {_pairs(not_held)} ("
                            + ", ".join(f"{accuracy[k]:.0%}" for k in not_held) + ")." if not_held else "."))
        if uninformative:
            concepts = sorted({c for _, c in uninformative})
            parts.append(f"The unerased model itself draws {', '.join(concepts)} in under {ACCURACY_HELD:.0%} of "
                         "them, so there a low accuracy says nothing about the erasure.")
        unmeasured = [k for k in accuracy.index if k not in measured.index]
        if unmeasured:
            parts.append(f"Not measured for {_pairs(unmeasured)}.")
        findings.append(Finding(TEST_TOPIC, " ".join(parts), {"held": held, "not_held": not_held}))
    else:
        findings.append(Finding(TEST_TOPIC, "No erased model is in this run: there is nothing to judge."))
    judged = judged.loc[[k for k in judged.index if k in held]]  # the memory is read on passing models only

    # -- regeneration (PSNR) against the unerased model, or the model's own R
    persists: list[Pair] = []
    if len(judged):
        gaps = {}
        for m, c in judged.index:
            if has_vanilla and (vanilla, c) in table.index and np.isfinite(table.loc[(vanilla, c), "psnr"]):
                baseline = table.loc[(vanilla, c), "psnr"]
            else:
                baseline = table.loc[(m, c), "ref_psnr"]
            gaps[m, c] = table.loc[(m, c), "psnr"] - baseline
        persists = [k for k, g in gaps.items() if np.isfinite(g) and g >= -PSNR_TOLERANCE_DB]
        against = ("the unerased model's on the same images" if has_vanilla
                   else "the same model's regenerations of the reference set (no unerased model in this run)")
        text = (f"The erased models regenerate their concept's images at {_range(judged['psnr'], '{:.1f}')} dB"
                + (f" against {_range(_vanilla_rows(table, vanilla, judged.index, 'psnr'), '{:.1f}')} dB for the "
                   "unerased model on the same concepts" if has_vanilla else "")
                + f"; {len(persists)} of {len(gaps)} pairs are within {PSNR_TOLERANCE_DB:g} dB of {against}"
                + (f" (largest drop {-min(gaps.values()):.1f} dB)." if min(gaps.values()) < 0 else "."))
        if "detected" in judged.columns and judged["detected"].notna().any():
            text += (f" The detector sees the concept in {_range(judged['detected'] * 100, '{:.0f}')}% of their "
                     "regenerations")
            if has_vanilla and "detected" in table.columns:
                vanilla_detected = _vanilla_rows(table, vanilla, judged.index, 'detected') * 100
                text += f" ({_range(vanilla_detected, '{:.0f}')}% for the unerased model's on the same concepts)"
            text += "."
        findings.append(Finding("Regeneration", text, {"gaps": gaps, "persists": persists}))

    # -- likelihood, like with like
    unstable = [k for k in table.index if bool(table.loc[k, "unstable"]) and k not in no_seeds
                and (k[0] == vanilla or k in held)]
    readable = judged.loc[[k for k in judged.index if k not in unstable]]
    if len(judged):
        parts = []
        if unstable:
            parts.append(f"EMD(R, N) is within the noise of genuine N(0, I) seeds for {_pairs(unstable)}: "
                         "their ratios are noise and are not read.")
        if len(readable):
            w2 = readable["rd_w2_50"]
            top = w2.idxmax()
            below = int((w2 < PAPER_BOUND_RD).sum())
            parts.append(
                f"On the paper's footing (official W2 against {official_samples} N(0, I) samples, median over "
                f"draws), {below} of {len(readable)} erased pairs are below {PAPER_BOUND_RD}; the largest is "
                f"{w2[top]:.2f} ({top[0]} on {top[1]}; 5-95% over draws of {official_samples}: "
                f"{readable.loc[top, 'rd_w2_50_low']:.2f} to {readable.loc[top, 'rd_w2_50_high']:.2f}), against the "
                f"paper's {PAPER_LARGEST_RD} (ESD on parachute).")
            emd = readable["rd_emd"]
            parts.append(
                f"The exact-EMD ratio, read on its own terms and not against 2.49, is {_range(emd)}; squared "
                f"distances make the W2 ratio roughly its square (square roots of the W2 ratios: "
                f"{_range(np.sqrt(w2))}).")
            diff = readable.get("rd_emd_minus_vanilla")
            if diff is not None and diff.notna().any():
                parts.append(f"Erased minus unerased (EMD ratio): {_range(diff, '{:+.2f}')}.")
            data = {"below": below, "n": len(readable), "largest_w2_50": float(w2[top]), "largest_pair": top}
        else:
            data = {"below": 0, "n": 0}
        findings.append(Finding("Likelihood", " ".join(parts), data))

    # -- the control reference set
    if "rd_ctrl_emd" in table.columns and table["rd_ctrl_emd"].notna().any():
        ctrl = readable["rd_ctrl_emd"] if len(judged) else pd.Series(dtype=float)
        text = (f"Against the control set (the base model's own generations without the concept, inverted alike), "
                f"d(E, R_control) (EMD) is {_range(ctrl)} for the erased models")
        if has_vanilla:
            vanilla_ctrl = _vanilla_rows(table, vanilla, readable.index if len(judged) else [], 'rd_ctrl_emd')
            text += f" and {_range(vanilla_ctrl)} for the unerased one on the same concepts"
        text += f", against {_range(readable['rd_emd']) if len(judged) else '–'} with the reference set R."
        findings.append(Finding("Control set", text, {"rd_ctrl_emd": ctrl.to_dict()}))

    # -- the conclusion, only where it is supported
    unreachable = [k for k in held if k in persists and k not in uninformative]
    if erasers:
        parts = []
        if unreachable:
            parts.append(f"For {_pairs(unreachable)}, prompts naming the concept no longer produce it, yet seeds "
                         "found by inversion still regenerate it: the concept is no longer reachable from its name, "
                         "but it is not forgotten.")
        if not_held:
            parts.append(f"This cannot be said of {_pairs(not_held)}: "
                         + ("they fail the prompt test, so the claim does not apply there." if has_test else
                            f"prompts naming the concept still produce it (at least {ACCURACY_HELD:.0%} of "
                            "generations), so erasure by name does not hold there."))
        if uninformative:
            parts.append(f"No claim of unreachability is made for {_pairs(uninformative)}: the unerased model "
                         f"does not draw the concept from prompts naming it either (below {ACCURACY_HELD:.0%}), so "
                         "there was nothing for the erasure to make unreachable.")
        if unreachable and not has_vanilla:
            parts.append("(No unerased model is in this run, so that the name reached the concept before erasure "
                         "is not checked.)")
        lost = [k for k in held if k not in persists and k not in no_seeds and k not in uninformative]
        if lost:
            parts.append(f"For {_pairs(lost)}, erasure by name holds and inversion does not regenerate the concept "
                         f"within {PSNR_TOLERANCE_DB:g} dB either.")
        if not parts:
            parts.append("No pair can be judged.")
        findings.append(Finding("Together", " ".join(parts), {"unreachable": unreachable}))

    return Verdict(findings=findings, held=held, uninformative=uninformative, not_held=not_held, persists=persists,
                   unreachable=unreachable,
                   no_seeds=no_seeds, unstable=unstable)


# --------------------------------------------------------------------------- the chapter's tables


def _interval(r: pd.Series, name: str, digits: int = 2) -> str:
    return interval(_get(r, name), _get(r, f"{name}_low"), _get(r, f"{name}_high"), digits)


def results_tables(table: pd.DataFrame, vanilla: str = VANILLA) -> dict[str, pd.DataFrame]:
    """The chapter's tables as text cells (no NaN, no True/False: "–" or words), at most 7 columns each.

    ``"models"``: what each model does with the concept (its share of prompt generations showing it
    and the other concepts of its kind, the prompt test's verdict, regeneration PSNR beside the VAE's,
    the NLLs of E and R); ``"regeneration"``: the regenerations scored as the official code scores them
    (detector, similarity to the concept's name beside the images' own) and the diverged seeds; ``"distances"``: the exact (EMD) relative distances of E and
    of the control set with their intervals, erased minus vanilla beside each, EMD(R, N) in units of
    the NLL's std with the stability flag; ``"official"``: the official W2 ratio against draws of 50
    N(0, I) samples (erased minus vanilla beside it), of 1000, and against the fixed large reference.
    """
    t = add_vanilla_differences(table, vanilla=vanilla)
    models, regeneration, distances, official = {}, {}, {}, {}
    for key, r in t.iterrows():
        sim, sim_orig = _get(r, "similarity"), _get(r, "similarity_original")
        diverged = int(r.get("diverged", 0))
        parts = [f"{k.upper()} {int(r[f'diverged_{k}'])}" for k in ("e", "r", "c")
                 if f"diverged_{k}" in r and int(r.get(f"diverged_{k}", 0) or 0)]
        passes = r.get("passes")
        models[key] = {
            "concept by name": percent(_get(r, "prompt_accuracy")),
            "others by name": percent(_get(r, "others_accuracy")),
            "prompt test": MISSING if is_missing(passes) else ("passes" if bool(passes) else "FAILS"),
            "PSNR E [dB]": number(r.get("psnr"), 1),
            "PSNR VAE [dB]": number(r.get("vae_psnr"), 1),
            "NLL E": number(r.get("nll"), 1),
            "NLL R": number(r.get("ref_nll"), 1),
        }
        regeneration[key] = {
            "regen. detected": percent(_get(r, "detected")),
            "regen. similarity": number(sim, 3),
            "images' similarity": number(sim_orig, 3),
            "diverged": str(diverged) + (f" ({', '.join(parts)})" if diverged and parts else ""),
        }
        sigma = _get(r, "emd_rn_sigma")
        stability = "" if not np.isfinite(sigma) else (", within noise" if bool(r.get("unstable")) else "")
        distances[key] = {
            "d(E,R) EMD [95% CI]": _interval(r, "rd_emd"),
            "EMD − vanilla": signed(r.get("rd_emd_minus_vanilla")),
            "EMD(R,N) [σ]": number(sigma, 2, "σ") + stability,
            "d(E,R_ctrl) EMD [95% CI]": _interval(r, "rd_ctrl_emd"),
            "ctrl − vanilla": signed(r.get("rd_ctrl_emd_minus_vanilla")),
        }
        official[key] = {
            "W2, 50 N [5–95%]": _interval(r, "rd_w2_50"),
            "W2 − vanilla": signed(r.get("rd_w2_50_minus_vanilla")),
            "W2, 1000 N [5–95%]": _interval(r, "rd_w2_1000"),
            "W2, fixed reference [95% CI]": _interval(r, "rd_w2"),
        }
    out = {}
    for name, rows in (("models", models), ("regeneration", regeneration), ("distances", distances),
                       ("official", official)):
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index = pd.MultiIndex.from_tuples(frame.index, names=["model", "concept"])
        if "rd_ctrl_emd" not in t.columns and name == "distances":
            frame = frame.drop(columns=["d(E,R_ctrl) EMD [95% CI]", "ctrl − vanilla"])
        out[name] = frame
    return out
