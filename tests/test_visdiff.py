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


# --------------------------------------------------------------------------- proposers, both stages, benchmark

import torch  # noqa: E402

from memories_lib.experiments.visdiff import (  # noqa: E402
    TIERS, CaptionProposer, DetectorProposer, Proposer, accuracy_at, accuracy_table, describe_differences,
    difference_pairs, ngrams, run_benchmark, target_rank,
)

HEADS = {"colour": ("red", "blue"), "shape": ("square", "circle")}


class StubDetector:
    """Channel 0 bright: red (else blue); channel 1 bright: square (else circle)."""

    label_names = HEADS

    def predict_proba(self, images):
        red = (images[:, 0].mean((1, 2)) > 0.5).float()
        square = (images[:, 1].mean((1, 2)) > 0.5).float()
        return {"colour": torch.stack([red, 1 - red], 1), "shape": torch.stack([square, 1 - square], 1)}

    def identity(self):
        return "stub"


class StubSimilarity:
    """A text scores the share of its named labels that the image shows, plus the image's own noise (channel 2)."""

    def similarity(self, images, texts):
        shown = {"red": images[:, 0].mean((1, 2)) > 0.5, "square": images[:, 1].mean((1, 2)) > 0.5}
        shown |= {"blue": ~shown["red"], "circle": ~shown["square"]}
        noise = 0.1 * images[:, 2].mean((1, 2))
        cols = []
        for text in texts:
            named = [w for w in text.split() if w in shown]
            cols.append(torch.stack([shown[w].float() for w in named]).mean(0) + noise)
        return torch.stack(cols, 1)

    def identity(self):
        return "stub"


class StubWorld:
    def detector(self):
        return StubDetector()

    def similarity(self):
        return StubSimilarity()

    def attribute_phrase(self, attributes):
        return " ".join(attributes[h] for h in ("colour", "shape") if h in attributes)


def _images(red, square, seed):
    """Images whose channels 0 and 1 carry the labels and channel 2 is noise."""
    g = torch.Generator().manual_seed(seed)
    n = len(red)
    x = torch.zeros(n, 3, 4, 4)
    x[:, 0] = torch.tensor(red, dtype=torch.float)[:, None, None]
    x[:, 1] = torch.tensor(square, dtype=torch.float)[:, None, None]
    x[:, 2] = torch.rand(n, 1, 1, generator=g)
    return x


def _planted(n=40, seed=0):
    """A: every image red, shapes half and half; B: every image blue, shapes half and half."""
    square = [i % 2 for i in range(n)]
    return _images([1] * n, square, seed), _images([0] * n, square, seed + 1)


def test_detector_proposer_proposes_what_is_more_frequent_in_a():
    a, b = _planted()
    proposer = DetectorProposer(StubDetector(), StubWorld().attribute_phrase, sample_size=10, rounds=2)
    assert isinstance(proposer, Proposer)
    proposed = proposer.propose(a, b, torch.Generator().manual_seed(0))
    assert proposed[0] == "red"  # gap 1: every sampled A image is red, no B image
    assert "blue" not in proposed  # more frequent in B: never a candidate
    assert set(proposed) <= {"red", "square", "circle", "red square", "red circle"}
    again = proposer.propose(a, b, torch.Generator().manual_seed(0))
    assert again == proposed  # the generator seeds the samples: deterministic


def test_detector_proposer_gaps_by_hand():
    proposer = DetectorProposer(StubDetector(), StubWorld().attribute_phrase, min_gap=0.25)
    labels_a = {"colour": np.array(["red", "red", "red", "blue"]), "shape": np.array(["square", "square", "circle", "circle"])}
    labels_b = {"colour": np.array(["red", "blue", "blue", "blue"]), "shape": np.array(["square", "circle", "circle", "circle"])}
    gaps = proposer.gaps(labels_a, labels_b)
    # red 3/4 - 1/4 = 0.5; square 2/4 - 1/4 = 0.25; red and square together 2/4 - 1/4 = 0.25
    assert gaps == pytest.approx({"red": 0.5, "square": 0.25, "red square": 0.25})
    skipping = DetectorProposer(StubDetector(), StubWorld().attribute_phrase, min_gap=0.25, skip=("red",))
    assert skipping.gaps(labels_a, labels_b) == pytest.approx({"square": 0.25})
    with pytest.raises(ValueError, match="min_gap"):
        DetectorProposer(StubDetector(), StubWorld().attribute_phrase, min_gap=0)


def test_caption_proposer_counts_ngrams():
    captions = {0: "a photo of a red square", 1: "a photo of a blue square"}

    def captioner(images):
        return [captions[int(images[i, 0, 0, 0] < 0.5)] for i in range(len(images))]

    a, b = _planted(10)
    proposer = CaptionProposer(captioner, max_ngram=2, sample_size=10, rounds=1)
    proposed = proposer.propose(a, b, torch.Generator().manual_seed(0))
    assert set(proposed) == {"red", "red square", "a red"}  # "of a", "a" alone: stop words only
    assert ngrams("A red, square", 2) == {"a", "red", "square", "a red", "red square"}


def test_describe_differences_ranks_a_planted_difference_first():
    a, b = _planted()
    report = describe_differences(StubWorld(), a, b, generator=torch.Generator().manual_seed(0))
    assert report.top(1) == ["red"]
    assert report.ranked[0].auroc == pytest.approx(1.0) and report.ranked[0].significant
    assert all(h.significant for h in report.ranked)
    assert {h.text for h in report.everything} == set(report.proposed)
    # the shapes are alike in A and B: no shape alone is a significant difference
    assert not {"square", "circle"} & set(report.top(10))


def test_significant_hypotheses_are_the_same_whether_the_answer_keeps_them_only_or_not():
    a, b = _planted()
    kept = describe_differences(StubWorld(), a, b, generator=torch.Generator().manual_seed(0))
    every = describe_differences(StubWorld(), a, b, generator=torch.Generator().manual_seed(0),
                                 keep_significant=False)
    assert every.ranked == every.everything and len(every.ranked) > len(every.significant)
    assert kept.significant == kept.ranked == every.significant
    assert [h.text for h in every.significant][:1] == ["red"]


def test_describe_differences_of_alike_sets_finds_nothing_significant_here():
    square = [i % 2 for i in range(40)]
    a, b = _images([i % 2 for i in range(40)], square, 0), _images([i % 2 for i in range(40)], square, 1)
    report = describe_differences(StubWorld(), a, b, generator=torch.Generator().manual_seed(0))
    assert report.ranked == ()  # the identical label sets leave nothing with a positive gap to rank


def test_target_rank_and_accuracy_by_hand():
    assert target_rank(["x", "y", "z"], "y") == 2
    assert target_rank(["x", "y"], "w") is None
    ranks = [1, 2, None, 6, 5]
    assert accuracy_at(ranks, 1) == pytest.approx(1 / 5)
    assert accuracy_at(ranks, 5) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        accuracy_at([], 1)


@pytest.fixture(scope="module")
def drawing_world():
    """The tiny shapes world's renderer with the stub-free label names of its classifier (no training)."""
    from memories_lib.worlds import open_world
    from memories_lib.worlds.shapes.classifier import HEADS as SHAPE_HEADS

    world = open_world("tiny")

    class Labels:
        label_names = SHAPE_HEADS

    world.detector = lambda: Labels()
    return world


def test_benchmark_pairs_differ_in_exactly_the_intended_attribute(drawing_world):
    n = 12
    pairs = difference_pairs(drawing_world, n, torch.Generator().manual_seed(0))
    heads = drawing_world.detector().label_names
    assert len(pairs) == len(TIERS) * sum(len(v) for v in heads.values())
    for pair in pairs:
        la, lb = pair.set_a.info["labels"], pair.set_b.info["labels"]
        k = round(TIERS[pair.tier] * n)
        assert len(pair.set_a) == len(pair.set_b) == n
        assert la[pair.head][:k] == [pair.label] * k  # A's first k images show the label,
        assert pair.label not in la[pair.head][k:] and pair.label not in lb[pair.head]  # no other image does
        assert pair.phrase == drawing_world.attribute_phrase({pair.head: pair.label})
        assert pair.set_a.images.shape == pair.set_b.images.shape
    # every other head is drawn from all its labels in both sets (not fixed, not shifted)
    many = difference_pairs(drawing_world, 300, torch.Generator().manual_seed(1), tiers={"easy": 1.0})
    shape_pair = next(p for p in many if p.head == "shape" and p.label == "star")
    for head in ("colour", "background"):
        for s in (shape_pair.set_a, shape_pair.set_b):
            assert set(s.info["labels"][head]) == set(heads[head])
    again = difference_pairs(drawing_world, n, torch.Generator().manual_seed(0))
    assert all(torch.equal(p.set_a.images, q.set_a.images) for p, q in zip(pairs, again))  # seeded


def test_benchmark_scores_each_pair_against_its_phrase():
    world = StubWorld()
    n = 20
    a_red, b_blue = _images([1] * n, [i % 2 for i in range(n)], 0), _images([0] * n, [i % 2 for i in range(n)], 1)
    from memories_lib.core.images import ImageSet
    from memories_lib.experiments.visdiff import DifferencePair

    def pair(tier, phrase):
        return DifferencePair(tier, "colour", "red", 1.0, phrase, ImageSet("A", a_red, [""] * n),
                              ImageSet("B", b_blue, [""] * n))

    runs = run_benchmark(world, [pair("easy", "red"), pair("easy", "square")], torch.Generator().manual_seed(0),
                         progress=False)
    assert [r.rank for r in runs] == [1, None]
    table = accuracy_table(runs)
    assert table.loc["easy", "Acc@1"] == pytest.approx(0.5) and table.loc["all", "pairs"] == 2
