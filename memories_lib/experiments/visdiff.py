"""Describing how two image sets differ, after VisDiff (Dunlap et al., CVPR 2024): the ranking stage.

VisDiff proposes candidate descriptions ("hypotheses") of what is more often true of image set A than
of image set B, then ranks them by how well each separates the sets: the similarity of every image to
the hypothesis (CLIP in the original; here the world's similarity model) is scored as a classifier of
A against B. :func:`rank_hypotheses` implements that ranker:

- **AUROC** of the similarities, A the positive class: the probability that an image of A is more
  similar to the hypothesis than an image of B, ties counted one half (the Mann-Whitney statistic
  divided by |A| |B|; 0.5 means the hypothesis does not tell the sets apart);
- **Welch's t-test** of the two similarity samples (unequal variances), two-sided p-value, and
  ``significant`` when p < ``alpha`` and A's mean similarity is the larger;
- hypotheses sorted by AUROC, largest first. The original code computes its t-test but ranks every
  hypothesis whatever its p-value; ``keep_significant=True`` (the default here) keeps only the
  significant ones, ``False`` ranks them all as the original does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class RankedHypothesis:
    """One candidate description and how well it separates set A from set B."""

    text: str
    auroc: float
    t: float
    p: float
    mean_a: float
    mean_b: float
    significant: bool


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive score > a negative score) + 0.5 P(equal): the area under the ROC curve."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC needs at least one score in each set")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic  # U of the positive sample
    return float(u) / (pos.size * neg.size)


def rank_hypotheses(similarity_a: np.ndarray, similarity_b: np.ndarray, hypotheses: Sequence[str],
                    alpha: float = 0.05, keep_significant: bool = True) -> list[RankedHypothesis]:
    """Rank ``hypotheses`` by how well they separate set A from set B (see the module docstring).

    similarity_a: (|A|, H) similarities of A's images to each hypothesis; similarity_b: (|B|, H).
    """
    sim_a, sim_b = np.asarray(similarity_a, dtype=float), np.asarray(similarity_b, dtype=float)
    if sim_a.ndim != 2 or sim_b.ndim != 2 or sim_a.shape[1] != len(hypotheses) or sim_b.shape[1] != len(hypotheses):
        raise ValueError(f"the similarities of A and B must be (images, hypotheses) with one column per hypothesis "
                         f"({len(hypotheses)}), got {sim_a.shape} and {sim_b.shape}")
    if sim_a.shape[0] < 2 or sim_b.shape[0] < 2:
        raise ValueError("each set needs at least two images for the t-test")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    ranked = []
    for j, text in enumerate(hypotheses):
        a, b = sim_a[:, j], sim_b[:, j]
        test = stats.ttest_ind(a, b, equal_var=False)
        t, p = float(test.statistic), float(test.pvalue)
        ranked.append(RankedHypothesis(text=text, auroc=auroc(a, b), t=t, p=p, mean_a=float(a.mean()),
                                       mean_b=float(b.mean()), significant=bool(p < alpha and t > 0)))
    ranked.sort(key=lambda h: -h.auroc)
    return [h for h in ranked if h.significant] if keep_significant else ranked
