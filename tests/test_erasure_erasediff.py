"""EraseDiff on a tiny random SD-layout model: the inner steps, the restored parameters, the outer update."""

from __future__ import annotations

import pytest
import torch

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.erasure import EraseDiffParams, erasediff_erase, resolve_params
from memories_lib.erasure.erasediff import inner_value, outer_loss
from memories_lib.erasure.training import trainable_copy
from memories_lib.erasure.unlearning import denoising_loss, forget_loss, index_batches, trained_names, unlearning_sets

CONCEPT = ConceptPrompts("triangle", ("a triangle",), ("a shape",), ("a star",))
LAM, LR = 1.0, 1e-2


def _tiny(**changes) -> EraseDiffParams:
    settings = dict(guides="a shape", preserve=["a star"], forget_samples=4, retain_samples=4, sample_steps=2,
                    batch_size=2, epochs=1, lr=1e-3)
    return EraseDiffParams(**{**settings, **changes})


@pytest.fixture(scope="module")
def setup(ldm):
    sets = unlearning_sets(ldm, ["a triangle"], _tiny(), torch.Generator().manual_seed(0))
    names = trained_names(ldm.unet, "noxattn")
    return sets, names


def test_the_inner_steps_leave_the_parameters_restored_and_the_outer_step_follows_the_formula(ldm, setup):
    sets, names = setup
    student, trained = trainable_copy(ldm.unet, names)
    theta = [p.detach().clone() for p in trained]
    optimizer = torch.optim.SGD(trained, lr=LR)  # plain gradient steps: the update can be computed by hand
    values = []
    for k in (1, 2):
        batches = index_batches(len(sets.forget), 2, torch.Generator().manual_seed(1))
        values.append(inner_value(student, trained, optimizer, sets, ldm, inner_steps=k, steps=2, batches=batches,
                                  generator=torch.Generator().manual_seed(2)))
        assert all(torch.equal(p, t) for p, t in zip(trained, theta)), "the inner steps left the parameters changed"
    # the value is the forget loss after K passes: the second pass starts where the first ended
    assert values[0] > 0 and values[1] > 0 and values[0] != values[1]
    inner = values[1]

    picks = torch.tensor([0, 1]), torch.tensor([2, 3])
    loss = outer_loss(student, ldm, sets, *picks, inner, LAM, torch.Generator().manual_seed(4))
    # by hand: the same draws (retain first, then forget), each gradient on its own
    g = torch.Generator().manual_seed(4)
    l_r = denoising_loss(student, ldm, *sets.retain_batch(picks[1]), g)
    l_f = forget_loss(student, ldm, *sets.forget_batch(picks[0]), g)
    assert torch.allclose(loss, l_r + LAM * (l_f - inner))
    grad_r = torch.autograd.grad(l_r, trained)
    grad_f = torch.autograd.grad(l_f, trained)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for p, t, gr, gf in zip(trained, theta, grad_r, grad_f):
        assert torch.allclose(p, t - LR * (gr + LAM * gf), atol=1e-6)
    moved = sum(int((p != t).sum()) for p, t in zip(trained, theta))
    assert moved > 0


def test_the_inner_value_is_a_constant_of_the_outer_loss(ldm, setup):
    sets, names = setup
    student, trained = trainable_copy(ldm.unet, names)
    picks = torch.tensor([0, 1]), torch.tensor([2, 3])
    grads = []
    for inner in (0.0, 5.0):
        loss = outer_loss(student, ldm, sets, *picks, inner, 2.0, torch.Generator().manual_seed(0))
        grads.append((float(loss.detach()), torch.autograd.grad(loss, trained)))
    assert grads[0][0] - grads[1][0] == pytest.approx(2.0 * 5.0, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))


def test_erasediff_trains_the_official_parameters_and_records_the_rounds(ldm):
    result = erasediff_erase(ldm, ["a triangle"], _tiny(epochs=2, inner_steps=2))
    before = dict(ldm.unet.named_parameters())
    changed = {n for n, p in result.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trained_names(ldm.unet, "noxattn")) == set(result.trained)
    assert len(result.details["inner_values"]) == 2 and len(result.details["losses"]) == 4
    assert result.details["pseudo_prompts"] == ["a shape"]


def test_erasediff_is_deterministic_given_the_seed(ldm):
    first, again = (erasediff_erase(ldm, ["a triangle"], _tiny()).unet for _ in range(2))
    other = erasediff_erase(ldm, ["a triangle"], _tiny(seed=1)).unet
    weights = lambda unet: torch.cat([p.flatten() for p in unet.parameters()])
    assert torch.equal(weights(first), weights(again)) and not torch.equal(weights(first), weights(other))


@pytest.mark.parametrize("bad, message", [
    ({"inner_steps": 0}, "erasediff inner_steps"),
    ({"lam": -1.0}, "erasediff lam must be >= 0"),
    ({"train_method": "selfattn"}, "erasediff train_method"),
])
def test_bad_erasediff_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_params("erasediff", bad, CONCEPT)


def test_defaults_are_the_official_nudity_run():
    full = resolve_params("erasediff", {}, CONCEPT)
    assert (full["inner_steps"], full["lam"], full["lr"], full["batch_size"], full["epochs"]) == (2, 1.0, 1e-5, 16, 5)
    assert full["train_method"] == "noxattn" and full["guides"] == ["a shape"] and full["preserve"] == ["a star"]
