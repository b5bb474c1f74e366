"""Describing how two image sets differ, after VisDiff (Dunlap et al., CVPR 2024): proposer, ranker, benchmark.

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

The proposing stage: a :class:`Proposer` looks at seeded samples of A and B and returns candidate
descriptions. VisDiff's caption-based proposer captions the samples (BLIP-2) and asks a language model (GPT-4)
what the captions of A say more often than those of B. Without a language model:

- :class:`DetectorProposer` (the shapes world's): the world's detector labels every sampled image
  (the argmax of each head); a label whose share in A's sample exceeds its share in B's by at least
  ``min_gap`` becomes a candidate, said in the world's own words (``World.attribute_phrase``:
  "a red shape", "a triangle"); two such labels of different heads that also occur together more
  often in A make a joined candidate ("a red triangle"). Several rounds of samples are pooled.
- :class:`CaptionProposer` (for a world with a captioning model, such as Stable Diffusion's): the
  samples are captioned by any callable, and the word n-grams found in more of A's captions than of
  B's (by ``min_gap`` of the sample) are the candidates: a counting stand-in for the language model.

:func:`describe_differences` runs both stages through a world (its detector and similarity model).

The benchmark, in the spirit of VisDiffBench's easy/medium/hard paired sets: :func:`difference_pairs`
draws, with the world's own renderer (``World.drawn_set``), pairs of sets that differ in one known
detector label. Set B never shows the label; in set A a share of the images shows it (``TIERS``:
all of them for easy, half for medium, a quarter for hard) and the rest are drawn like B's. Every
other attribute (the other heads' labels, size, position, rotation, pattern) is drawn from the same
distribution in both sets. A pair is *solved at k* when the world's phrase for that one label
(``attribute_phrase({head: label})``, exactly that text) is among the first k hypotheses of the
ranked (by default: significant) list; Acc@k is the share of pairs solved at k. VisDiffBench instead
asks GPT-4 whether a free-text description matches its ground truth; its tiers are sets chosen by
people for how subtle the difference is, where here subtlety is the share of A that carries it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ..core.images import ImageSet, seeded_choice
from ..core.progress import tqdm
from ..worlds.base import Detector, World

#: VisDiff's Acc@1 and Acc@5 on VisDiffBench (its Table 2), caption-based configuration: BLIP-2 captions and GPT-4
#: as proposer, CLIP features as ranker (its GPT-4V image proposer scores higher on some tiers). Quoted from the
#: paper, never computed here.
VISDIFF_ACCURACY: dict[str, tuple[float, float]] = {
    "ImageNet-R/*": (0.78, 0.96), "easy": (0.88, 0.99), "medium": (0.75, 0.86), "hard": (0.61, 0.80),
}

#: The benchmark's tiers: the share of set A's images that show the label set B never shows.
TIERS: dict[str, float] = {"easy": 1.0, "medium": 0.5, "hard": 0.25}


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


# --------------------------------------------------------------------------- proposers


@runtime_checkable
class Proposer(Protocol):
    """Candidate descriptions of what is more often true of images A than of images B.

    ``propose`` takes the two sets' images, (N, 3, H, W) in [0, 1], and a ``torch.Generator`` that
    seeds its samples; the same generator state gives the same candidates.
    """

    def propose(self, images_a: torch.Tensor, images_b: torch.Tensor, generator: torch.Generator) -> list[str]: ...


def _sample(n_total: int, size: int, generator: torch.Generator) -> list[int]:
    return seeded_choice(n_total, min(size, n_total), generator)


def _check_proposer_settings(sample_size: int, rounds: int, min_gap: float, max_hypotheses: int) -> None:
    if sample_size < 1 or rounds < 1 or max_hypotheses < 1:
        raise ValueError(f"sample_size, rounds and max_hypotheses must be at least 1, got {sample_size}, {rounds}, "
                         f"{max_hypotheses}")
    if not 0 < min_gap <= 1:
        raise ValueError(f"min_gap must lie in (0, 1], got {min_gap}")


def _best_first(gaps: Mapping[str, float], max_hypotheses: int) -> list[str]:
    """Candidates by their largest gap over the rounds, largest first (ties: alphabetical), at most ``max_hypotheses``."""
    return sorted(gaps, key=lambda text: (-gaps[text], text))[:max_hypotheses]


@dataclass(frozen=True)
class DetectorProposer:
    """Candidates from a detector's labels on samples of A and B (see the module docstring).

    detector:   ``label_names`` (head -> labels) and ``predict_proba(images) -> {head: (N, K)}``;
    phrase:     words for a dict of labels by head (a world's ``attribute_phrase``);
    skip:       labels never proposed (a detector's "other");
    sample_size: images sampled from each set per round; rounds: samples pooled;
    min_gap:    how much larger a label's share in A's sample must be than in B's;
    joined:     also propose two labels of different heads together;
    max_hypotheses: the largest gaps kept.
    """

    detector: Detector
    phrase: Callable[[Mapping[str, str]], str]
    skip: tuple[str, ...] = ()
    sample_size: int = 20
    rounds: int = 3
    min_gap: float = 0.1
    joined: bool = True
    max_hypotheses: int = 20

    def __post_init__(self) -> None:
        _check_proposer_settings(self.sample_size, self.rounds, self.min_gap, self.max_hypotheses)

    def labels(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """The detector's label (argmax) of every image, per head."""
        proba = self.detector.predict_proba(images)
        return {head: np.asarray(self.detector.label_names[head])[p.argmax(-1).numpy()] for head, p in proba.items()}

    def gaps(self, labels_a: Mapping[str, np.ndarray], labels_b: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Each candidate's text and its gap (share in A minus share in B) for one round's samples."""
        single: list[tuple[str, str, float]] = []
        for head, names in self.detector.label_names.items():
            for label in names:
                if label in self.skip:
                    continue
                gap = float(np.mean(labels_a[head] == label) - np.mean(labels_b[head] == label))
                if gap >= self.min_gap - 1e-12:
                    single.append((head, label, gap))
        out = {self.phrase({head: label}): gap for head, label, gap in single}
        if self.joined:
            for i, (h1, l1, _) in enumerate(single):
                for h2, l2, _ in single[i + 1:]:
                    if h1 == h2:
                        continue
                    both_a = np.mean((labels_a[h1] == l1) & (labels_a[h2] == l2))
                    both_b = np.mean((labels_b[h1] == l1) & (labels_b[h2] == l2))
                    if both_a - both_b >= self.min_gap - 1e-12:
                        out[self.phrase({h1: l1, h2: l2})] = float(both_a - both_b)
        return out

    def propose(self, images_a: torch.Tensor, images_b: torch.Tensor, generator: torch.Generator) -> list[str]:
        labels_a, labels_b = self.labels(images_a), self.labels(images_b)
        best: dict[str, float] = {}
        for _ in range(self.rounds):
            ia, ib = _sample(len(images_a), self.sample_size, generator), _sample(len(images_b), self.sample_size, generator)
            round_gaps = self.gaps({h: v[ia] for h, v in labels_a.items()}, {h: v[ib] for h, v in labels_b.items()})
            for text, gap in round_gaps.items():
                best[text] = max(gap, best.get(text, -1.0))
        return _best_first(best, self.max_hypotheses)


def ngrams(text: str, max_n: int) -> set[str]:
    """Every run of 1 to ``max_n`` consecutive lower-case words of ``text``."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {" ".join(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class CaptionProposer:
    """Candidates from captions of samples of A and B: word n-grams in more of A's captions than of B's.

    captioner: any callable from images (N, 3, H, W) in [0, 1] to N captions (BLIP-2 for Stable
    Diffusion's images; in the tests, a stub). ``stop_words``: n-grams never proposed ("a", "of", ...).
    The other settings are :class:`DetectorProposer`'s.
    """

    captioner: Callable[[torch.Tensor], Sequence[str]]
    max_ngram: int = 3
    stop_words: tuple[str, ...] = ("a", "an", "the", "of", "on", "in", "with", "and", "photo", "image")
    sample_size: int = 20
    rounds: int = 3
    min_gap: float = 0.1
    max_hypotheses: int = 20

    def __post_init__(self) -> None:
        _check_proposer_settings(self.sample_size, self.rounds, self.min_gap, self.max_hypotheses)
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be at least 1, got {self.max_ngram}")

    def _grams(self, images: torch.Tensor) -> list[set[str]]:
        captions = list(self.captioner(images))
        if len(captions) != len(images):
            raise ValueError(f"the captioner returned {len(captions)} captions for {len(images)} images")
        stop = set(self.stop_words)
        return [{g for g in ngrams(c, self.max_ngram) if not set(g.split()) <= stop} for c in captions]

    def propose(self, images_a: torch.Tensor, images_b: torch.Tensor, generator: torch.Generator) -> list[str]:
        best: dict[str, float] = {}
        for _ in range(self.rounds):
            ia, ib = _sample(len(images_a), self.sample_size, generator), _sample(len(images_b), self.sample_size, generator)
            grams_a, grams_b = self._grams(images_a[ia]), self._grams(images_b[ib])
            for gram in set().union(*grams_a):
                gap = np.mean([gram in g for g in grams_a]) - np.mean([gram in g for g in grams_b])
                if gap >= self.min_gap - 1e-12:
                    best[gram] = max(float(gap), best.get(gram, -1.0))
        return _best_first(best, self.max_hypotheses)


def detector_proposer(world: World, **settings: Any) -> DetectorProposer:
    """The :class:`DetectorProposer` of ``world``: its detector, said in its words (``settings``: the proposer's)."""
    return DetectorProposer(world.detector(), world.attribute_phrase, **settings)


# --------------------------------------------------------------------------- both stages


@dataclass(frozen=True)
class DifferenceReport:
    """What :func:`describe_differences` found: the candidates proposed and how they rank.

    ranked:   the answer: hypotheses by AUROC, largest first (only the significant ones if asked);
    everything: every candidate ranked, significant or not (what the official code keeps).
    """

    proposed: tuple[str, ...]
    ranked: tuple[RankedHypothesis, ...]
    everything: tuple[RankedHypothesis, ...]

    def top(self, k: int = 5) -> list[str]:
        """The texts of the first ``k`` hypotheses of the answer."""
        return [h.text for h in self.ranked[:k]]

    @property
    def significant(self) -> tuple[RankedHypothesis, ...]:
        """The significant hypotheses, by AUROC, whether or not the answer keeps only those."""
        return tuple(h for h in self.everything if h.significant)


def _images(x: ImageSet | torch.Tensor) -> torch.Tensor:
    return x.images if isinstance(x, ImageSet) else x


def describe_differences(world: World, set_a: ImageSet | torch.Tensor, set_b: ImageSet | torch.Tensor, *,
                         generator: torch.Generator, proposer: Proposer | None = None, alpha: float = 0.05,
                         keep_significant: bool = True) -> DifferenceReport:
    """VisDiff through ``world``: propose from seeded samples of A and B, rank with the world's similarity model.

    ``proposer`` defaults to the world's :class:`DetectorProposer`; the ranker scores every image of both
    sets against every candidate (:func:`rank_hypotheses`, ``alpha`` and ``keep_significant`` its own).
    """
    a, b = _images(set_a), _images(set_b)
    proposer = proposer or detector_proposer(world)
    proposed = tuple(proposer.propose(a, b, generator))
    if not proposed:
        return DifferenceReport((), (), ())
    similarity = world.similarity()
    sim_a, sim_b = similarity.similarity(a, list(proposed)), similarity.similarity(b, list(proposed))
    everything = rank_hypotheses(sim_a.numpy(), sim_b.numpy(), proposed, alpha=alpha, keep_significant=False)
    ranked = [h for h in everything if h.significant] if keep_significant else everything
    return DifferenceReport(proposed, tuple(ranked), tuple(everything))


# --------------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class DifferencePair:
    """Two image sets that differ in one known detector label (see the module docstring)."""

    tier: str
    head: str
    label: str
    share: float           # of A's images showing the label (B: none)
    phrase: str            # the world's words for the label alone: the answer a solved pair ranks first
    set_a: ImageSet
    set_b: ImageSet = field(repr=False)


def difference_pairs(world: World, n: int, generator: torch.Generator, tiers: Mapping[str, float] | None = None,
                     skip: Sequence[str] = ()) -> list[DifferencePair]:
    """One pair per tier and detector label (except ``skip``), each set of ``n`` images drawn by ``world``.

    A's first ``round(share * n)`` images show the label, its others and all of B's show another label of
    the same head, every other attribute drawn alike; the sets' seeds come from ``generator``.
    """
    tiers = dict(TIERS if tiers is None else tiers)
    if n < 2:
        raise ValueError(f"each set of a pair needs n >= 2 images, got {n}")
    for tier, share in tiers.items():
        if not 0 < share <= 1 or round(share * n) < 1:
            raise ValueError(f"tier {tier!r}: the share of A showing the label must be in (0, 1] and leave at least "
                             f"one image of {n}, got {share}")
    label_names = world.detector().label_names
    pairs = []
    for tier, share in tiers.items():
        for head, names in label_names.items():
            for label in names:
                if label in skip:
                    continue
                others = [x for x in names if x != label and x not in skip]
                k = round(share * n)
                s1, s2, s3 = (int(v) for v in torch.randint(0, 2**31 - 1, (3,), generator=generator))
                shown = world.drawn_set(k, s1, {head: [label]})
                rest = world.drawn_set(n - k, s2, {head: others})
                a = ImageSet(f"A[{tier}:{label}]", torch.cat([shown.images, rest.images]),
                             shown.prompts + rest.prompts,
                             info={"labels": {h: shown.info["labels"][h] + rest.info["labels"][h]
                                              for h in shown.info["labels"]}})
                b = world.drawn_set(n, s3, {head: others})
                b = ImageSet(f"B[{tier}:{label}]", b.images, b.prompts, info=b.info)
                pairs.append(DifferencePair(tier, head, label, k / n, world.attribute_phrase({head: label}), a, b))
    return pairs


def target_rank(ranked: Sequence[str], target: str) -> int | None:
    """The 1-based place of ``target`` in ``ranked`` (exact text), None when it is absent."""
    return ranked.index(target) + 1 if target in ranked else None


def accuracy_at(ranks: Sequence[int | None], k: int) -> float:
    """Acc@k: the share of ``ranks`` (None: not in the answer) that are at most ``k``."""
    if not ranks:
        raise ValueError("Acc@k needs at least one pair")
    return float(np.mean([r is not None and r <= k for r in ranks]))


@dataclass(frozen=True)
class BenchmarkRun:
    """One pair of the benchmark, the report on it and where its known difference ranks (None: absent)."""

    pair: DifferencePair
    report: DifferenceReport
    rank: int | None


def run_benchmark(world: World, pairs: Sequence[DifferencePair], generator: torch.Generator, *,
                  proposer: Proposer | None = None, alpha: float = 0.05, keep_significant: bool = True,
                  progress: bool = True) -> list[BenchmarkRun]:
    """:func:`describe_differences` on every pair (one ``generator`` for all samples, in order)."""
    proposer = proposer or detector_proposer(world)
    runs = []
    for pair in tqdm(pairs, desc="VisDiff pairs", disable=not progress):
        report = describe_differences(world, pair.set_a, pair.set_b, generator=generator, proposer=proposer,
                                      alpha=alpha, keep_significant=keep_significant)
        runs.append(BenchmarkRun(pair, report, target_rank([h.text for h in report.ranked], pair.phrase)))
    return runs


def accuracy_table(runs: Sequence[BenchmarkRun], ks: Sequence[int] = (1, 5)) -> pd.DataFrame:
    """Acc@k per tier (rows in the runs' order) and over all pairs, with the number of pairs."""
    tiers = list(dict.fromkeys(r.pair.tier for r in runs))
    rows = {}
    for tier in [*tiers, "all"]:
        ranks = [r.rank for r in runs if tier == "all" or r.pair.tier == tier]
        rows[tier] = {"pairs": len(ranks), **{f"Acc@{k}": accuracy_at(ranks, k) for k in ks}}
    return pd.DataFrame.from_dict(rows, orient="index")
