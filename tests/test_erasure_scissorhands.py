"""Scissorhands on hand-made weights and a tiny random SD-layout model: SNIP scores, trimming, repair."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.erasure import ScissorhandsParams, resolve_params, scissorhands_erase, trim_mask
from memories_lib.erasure.scissorhands import (
    RELEASED_REINIT_LAYERS,
    connection_sensitivity,
    fresh_init,
    reinit_names,
    reinitialise,
)
from memories_lib.erasure.training import trainable_copy
from memories_lib.erasure.unlearning import denoising_loss, index_batches, trained_names, unlearning_sets

CONCEPT = ConceptPrompts("triangle", ("a triangle",), ("a shape",), ("a star",))
ATTN1 = RELEASED_REINIT_LAYERS[0]  # up_blocks.1.attentions.1...attn1: present in the tiny UNet too

# A hand-made layer: |G * w| ranks differently from |G| and from |w|.
WEIGHT = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.1, 4.0, -1.0, 2.0], [5.0, 0.2, -0.3, 1.0]])
BIAS = torch.tensor([0.5, -1.0, 2.0])
G_WEIGHT = torch.tensor([[2.0, 1.0, 10.0, 0.1], [30.0, 0.1, 1.0, 2.0], [0.1, 6.0, 3.0, 0.5]])
G_BIAS = torch.tensor([1.0, 0.2, 0.1])
TOP3 = {(0, 2), (1, 3), (1, 0)}  # scores 5, 4, 3; by |G| it would be (1,0), (0,2), (2,1); by |w| (2,0), (1,1), (0,3)


def _tiny(**changes) -> ScissorhandsParams:
    settings = dict(guides="a shape", preserve=["a star"], forget_samples=4, retain_samples=4, sample_steps=2,
                    batch_size=2, epochs=1, prune_batches=2, lr=1e-3)
    return ScissorhandsParams(**{**settings, **changes})


def test_exactly_the_top_connection_sensitive_weights_are_reinitialised():
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(WEIGHT)
        layer.bias.copy_(BIAS)
    scores = {"weight": (G_WEIGHT * WEIGHT).abs(), "bias": (G_BIAS * BIAS).abs()}
    trim = trim_mask(scores, sparsity=0.8)  # 15 weights, int(0.8 * 15) = 12 kept, 3 trimmed
    assert {tuple(i) for i in trim["weight"].nonzero().tolist()} == TOP3 and not trim["bias"].any()
    count = reinitialise(layer, trim, ["weight", "bias"], torch.Generator().manual_seed(0))
    changed = {tuple(i) for i in (layer.weight != WEIGHT).nonzero().tolist()}
    assert count == 3 and changed == TOP3 and torch.equal(layer.bias, BIAS)
    bound = math.sqrt(6 / 4)  # Kaiming-uniform with the ReLU gain, fan_in 4
    assert all(abs(float(layer.weight.detach()[i])) <= bound for i in TOP3)


def test_fresh_initialisation_kaiming_for_matrices_zero_for_biases_one_for_scales():
    g = torch.Generator().manual_seed(0)
    w = fresh_init("to_q.weight", torch.zeros(64, 100), g)
    assert float(w.abs().max()) <= math.sqrt(6 / 100) and float(w.std()) == pytest.approx(math.sqrt(2 / 100), rel=0.1)
    assert torch.equal(fresh_init("to_out.0.bias", torch.ones(5), g), torch.zeros(5))
    assert torch.equal(fresh_init("norm.weight", torch.zeros(5), g), torch.ones(5))


def test_connection_sensitivity_is_the_summed_absolute_gradient_times_the_weight(ldm):
    sets = unlearning_sets(ldm, ["a triangle"], _tiny(), torch.Generator().manual_seed(0))
    student, _ = trainable_copy(ldm.unet, trained_names(ldm.unet, "xattn"))
    scores = connection_sensitivity(student, sets, ldm, batches=2, batch_size=2, generator=torch.Generator().manual_seed(1))
    assert [p.requires_grad for p in student.parameters()] == ["attn2." in n for n, _ in student.named_parameters()]
    g = torch.Generator().manual_seed(1)  # by hand: the same draws, every parameter
    unet = copy.deepcopy(ldm.unet).requires_grad_(True)
    order = index_batches(len(sets.forget), 2, g)
    total = [torch.zeros_like(p) for p in unet.parameters()]
    for _ in range(2):
        z0, cond, _ = sets.forget_batch(next(order))
        grads = torch.autograd.grad(denoising_loss(unet, ldm, z0, cond, g), list(unet.parameters()), allow_unused=True)
        total = [t if x is None else t + x.abs() for t, x in zip(total, grads)]
    for (name, p), t in zip(unet.named_parameters(), total):
        assert torch.allclose(scores[name], (t * p.detach()).abs(), atol=1e-7), name


def test_only_trimmed_weights_of_the_chosen_layers_change_outside_the_trained_set(ldm):
    params = _tiny(train_method="xattn", reinit_layers=[ATTN1], sparsity=0.9)
    result = scissorhands_erase(ldm, ["a triangle"], params)
    before = dict(ldm.unet.named_parameters())
    trim = result.selected
    total = sum(m.numel() for m in trim.values())
    assert sum(int(m.sum()) for m in trim.values()) == total - int(0.9 * total) == result.details["trimmed"]
    expected = {(n, i) for n, m in trim.items() if n.startswith(ATTN1) for i in range(m.numel()) if m.flatten()[i]}
    changed = {(n, i) for n, p in result.unet.named_parameters() if "attn2." not in n
               for i in (p != before[n]).flatten().nonzero().flatten().tolist()}
    assert expected and changed == expected
    assert result.details["reinitialised"] == len(expected)


def test_the_released_layers_are_the_self_attention_of_compvis_output_blocks_4_and_7(ldm):
    names = reinit_names(ldm.unet, list(RELEASED_REINIT_LAYERS))  # the tiny UNet has only the first of the two
    assert names and all(n.startswith(ATTN1) for n in names) and any(n.endswith("to_q.weight") for n in names)
    with pytest.raises(ValueError, match="match no parameter"):
        reinit_names(ldm.unet, ["down_blocks.9."])
    assert reinit_names(ldm.unet, None) == [n for n, _ in ldm.unet.named_parameters()]


def test_scissorhands_is_deterministic_given_the_seed(ldm):
    first, again = (scissorhands_erase(ldm, ["a triangle"], _tiny(reinit_layers=None)).unet for _ in range(2))
    other = scissorhands_erase(ldm, ["a triangle"], _tiny(reinit_layers=None, seed=1)).unet
    weights = lambda unet: torch.cat([p.flatten() for p in unet.parameters()])
    assert torch.equal(weights(first), weights(again)) and not torch.equal(weights(first), weights(other))


@pytest.mark.parametrize("bad, message", [
    ({"sparsity": 1.0}, "scissorhands sparsity"),
    ({"prune_batches": 0}, "scissorhands prune_batches"),
    ({"reinit_layers": []}, "scissorhands reinit_layers"),
    ({"lam": -0.1}, "scissorhands lam"),
])
def test_bad_scissorhands_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_params("scissorhands", bad, CONCEPT)


def test_defaults_are_the_official_nudity_run():
    full = resolve_params("scissorhands", {}, CONCEPT)
    assert (full["sparsity"], full["lam"], full["prune_batches"], full["lr"], full["epochs"], full["batch_size"]) == \
        (0.995, 0.1, 10, 1e-5, 5, 16)
    assert full["train_method"] == "full" and full["reinit_layers"] == list(RELEASED_REINIT_LAYERS)
