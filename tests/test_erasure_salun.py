"""SalUn on a tiny random SD-layout model: the saliency mask and the masked fine-tuning."""

from __future__ import annotations

import pytest
import torch

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.erasure import SalUnParams, resolve_params, saliency_mask, salun_erase

CONCEPT = ConceptPrompts("triangle", ("a triangle",), ("a shape",), ("a star",))
#: |g| = 0.1 5 3 0.2 | 0.5 4 0.01 2: the top half is {5, 4, 3, 2}
GRADIENT = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([-0.5, 4.0, 0.01, -2.0])}
TOP_HALF = {"a": [[False, True], [True, False]], "b": [False, True, False, True]}


def _tiny(**changes) -> SalUnParams:
    settings = dict(guides="a shape", preserve=["a star"], forget_samples=4, retain_samples=4, sample_steps=2,
                    batch_size=2, epochs=1, lr=1e-2)
    return SalUnParams(**{**settings, **changes})


def _official_ranks_kept(gradient: dict, threshold: float, negate: bool) -> dict:
    """The official generate_mask.py ranking, reread: argsort of (-)|g|, keep the ranks below int(N * threshold)."""
    scores = torch.cat([g.abs().flatten() for g in gradient.values()])
    scores = -scores if negate else scores
    ranks = torch.argsort(torch.argsort(scores))
    kept = ranks < int(len(scores) * threshold)
    out, start = {}, 0
    for name, g in gradient.items():
        out[name] = kept[start:start + g.numel()].view(g.shape).tolist()
        start += g.numel()
    return out


def test_the_mask_keeps_the_most_salient_half_as_the_paper_and_current_code_say():
    mask = saliency_mask(GRADIENT, 0.5, "most-salient")
    assert {k: v.tolist() for k, v in mask.items()} == TOP_HALF
    assert _official_ranks_kept(GRADIENT, 0.5, negate=True) == TOP_HALF  # the code since commit b874ee9
    quarter = saliency_mask(GRADIENT, 0.25)
    assert quarter["a"].tolist() == [[False, True], [False, False]] and quarter["b"].tolist() == [False, True] + [False] * 2


def test_the_least_salient_rule_is_the_first_released_mask_code():
    mask = saliency_mask(GRADIENT, 0.5, "least-salient")
    assert {k: v.tolist() for k, v in mask.items()} == _official_ranks_kept(GRADIENT, 0.5, negate=False)
    assert all((mask[k] == ~torch.tensor(TOP_HALF[k])).all() for k in GRADIENT)


@pytest.mark.parametrize("rule", ["most-salient", "least-salient"])
def test_only_the_masked_weights_change(ldm, rule):
    result = salun_erase(ldm, ["a triangle"], _tiny(mask_rule=rule))
    before, after = dict(ldm.unet.named_parameters()), dict(result.unet.named_parameters())
    mask = result.selected
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert kept == total // 2 == result.details["mask_kept"]
    changed = {n: before[n] != after[n] for n in before}
    assert not any((changed[n] & ~mask[n]).any() for n in before), "a weight outside the mask changed"
    moved = sum(int((changed[n] & mask[n]).sum()) for n in before)
    assert moved > 0.9 * kept  # Adam moves every masked weight with a nonzero gradient
    assert len(result.details["losses"]) == 2  # one epoch of 4 forget images in batches of 2


def test_the_two_rules_train_complementary_weights(ldm):
    most = salun_erase(ldm, ["a triangle"], _tiny(epochs=1)).selected
    least = salun_erase(ldm, ["a triangle"], _tiny(epochs=1, mask_rule="least-salient")).selected
    assert all(torch.equal(most[n], ~least[n]) for n in most)


def test_salun_is_deterministic_given_the_seed(ldm):
    first, again = (salun_erase(ldm, ["a triangle"], _tiny()).unet for _ in range(2))
    other = salun_erase(ldm, ["a triangle"], _tiny(seed=1)).unet
    weights = lambda unet: torch.cat([p.flatten() for p in unet.parameters()])
    assert torch.equal(weights(first), weights(again)) and not torch.equal(weights(first), weights(other))


@pytest.mark.parametrize("bad, message", [
    ({"mask_rule": "random"}, "salun mask_rule must be one of"),
    ({"threshold": 0.0}, "salun threshold"),
    ({"threshold": 1.5}, "salun threshold"),
    ({"alpha": -0.1}, "salun alpha"),
])
def test_bad_salun_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_params("salun", bad, CONCEPT)


def test_defaults_are_the_official_ones_and_the_concept_fills_guides_and_preserve():
    full = resolve_params("salun", {}, CONCEPT)
    assert (full["alpha"], full["threshold"], full["mask_rule"], full["mask_guidance"]) == (0.5, 0.5, "most-salient", 7.5)
    assert (full["lr"], full["batch_size"], full["epochs"], full["train_method"]) == (1e-5, 8, 5, "full")
    assert full["guides"] == ["a shape"] and full["preserve"] == ["a star"]
