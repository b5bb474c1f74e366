"""The VisDiff ranker: AUROC and Welch's t-test of image-text similarities, A against B."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from memories_lib.experiments.visdiff import auroc, rank_hypotheses


@pytest.mark.parametrize("pos, neg, area", [([3, 4], [1, 2], 1.0), ([1, 2], [3, 4], 0.0), ([1], [1], 0.5),
                                            ([1, 3], [2], 0.5), ([2, 2, 5], [2, 1], 5 / 6)])
def test_auroc_by_hand(pos, neg, area):
    assert auroc(pos, neg) == pytest.approx(area)


def test_auroc_is_the_share_of_pairs_ordered_right():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.3, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # rounding makes ties
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(pos, neg) == pytest.approx(pairs)
    with pytest.raises(ValueError, match="at least one score"):
        auroc([], [1.0])


def _similarities(seed=0, n=60):
    rng = np.random.default_rng(seed)
    a = np.stack([rng.normal(0.30, 0.02, n), rng.normal(0.2, 0.02, n), rng.normal(0.10, 0.02, n)], axis=1)
    b = np.stack([rng.normal(0.25, 0.02, n), rng.normal(0.2, 0.02, n), rng.normal(0.15, 0.02, n)], axis=1)
    return a, b


def test_only_what_is_more_true_of_a_is_kept_and_ranked_first():
    a, b = _similarities()
    texts = ["a red shape", "a shape", "a blue shape"]
    kept = rank_hypotheses(a, b, texts)
    assert [h.text for h in kept] == ["a red shape"]
    (red,) = kept
    welch = stats.ttest_ind(a[:, 0], b[:, 0], equal_var=False)
    assert red.p == pytest.approx(welch.pvalue) and red.t == pytest.approx(welch.statistic)
    assert red.auroc > 0.9 and red.mean_a > red.mean_b and red.significant
    everything = rank_hypotheses(a, b, texts, keep_significant=False)
    assert [h.text for h in everything] == ["a red shape", "a shape", "a blue shape"]
    assert everything[-1].auroc < 0.1 and not everything[-1].significant  # more true of B: not a difference of A


def test_bad_input_is_named():
    a, b = _similarities()
    with pytest.raises(ValueError, match=r"one column per hypothesis \(2\), got \(60, 3\)"):
        rank_hypotheses(a, b, ["one", "two"])
    with pytest.raises(ValueError, match="at least two images"):
        rank_hypotheses(a[:1], b, ["x", "y", "z"])
    with pytest.raises(ValueError, match="alpha"):
        rank_hypotheses(a, b, ["x", "y", "z"], alpha=1.5)
