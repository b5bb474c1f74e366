"""SalUn on a tiny random SD-layout model: the saliency mask and the masked fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.core.models import encode_prompts
from memories_lib.erasure import SalUnParams, resolve_params, saliency_mask, salun_erase
from memories_lib.erasure.salun import saliency_gradients
from memories_lib.erasure.training import add_noise, trainable_copy
from memories_lib.erasure.unlearning import index_batches, steps_per_epoch, trained_names, unlearning_sets

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


def test_saliency_is_the_gradient_of_the_guided_forget_loss_written_out(ldm):
    """|sum over one pass of D_f of grad -MSE((1 + w) eps(c) - w eps(empty), eps)|, the two predictions made by separate
    calls here (one batched call in the library): a wrong sign of w, the unguided loss or one batch would differ."""
    params = _tiny()
    names = trained_names(ldm.unet, params.train_method)
    g = torch.Generator().manual_seed(0)
    sets = unlearning_sets(ldm, ["a triangle"], params, g)
    student, _ = trainable_copy(ldm.unet, names)
    ours = saliency_gradients(student, names, sets, ldm, batch_size=2, guidance=params.mask_guidance,
                              generator=torch.Generator().manual_seed(1))

    unet = copy.deepcopy(ldm.unet).requires_grad_(True)
    chosen = [dict(unet.named_parameters())[n] for n in names]
    w, g = params.mask_guidance, torch.Generator().manual_seed(1)
    null = encode_prompts(ldm, [""])
    total = [torch.zeros_like(p) for p in chosen]
    order = index_batches(len(sets.forget), 2, g)
    for _ in range(steps_per_epoch(len(sets.forget), 2)):
        z0, cond, _ = sets.forget_batch(next(order))
        z_t, t, eps = add_noise(ldm, z0, g)
        e_c = unet(z_t, t, encoder_hidden_states=cond).sample
        e_0 = unet(z_t, t, encoder_hidden_states=null.expand_as(cond)).sample
        loss = -((1 + w) * e_c - w * e_0 - eps).square().mean()
        total = [acc + grad for acc, grad in zip(total, torch.autograd.grad(loss, chosen))]
    assert steps_per_epoch(len(sets.forget), 2) == 2
    for name, acc in zip(names, total):
        # float32 sums in another order (one batched call against two): agreement to 1e-4 of each tensor's scale
        torch.testing.assert_close(ours[name], acc.abs(), rtol=0, atol=1e-4 * float(acc.abs().max()))


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
