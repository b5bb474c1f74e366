"""RECE on a tiny random SD-layout model: the closed-form attack, the repair, and what they change."""

from __future__ import annotations

import pytest
import torch

from memories_lib.core.models import hash_modules
from memories_lib.erasure import (
    RECEParams,
    adversarial_embedding,
    closed_form_weight,
    cross_attention_projections,
    resolve_params,
    rece_erase,
    token_embeddings,
    uce_erase,
)

PROMPTS, GUIDES, PRESERVE = ["a triangle", "a red triangle"], ["a shape", "a red shape"], ["a star"]


def _weights(unet) -> dict[str, torch.Tensor]:
    return {name: layer.weight.detach().double() for name, layer in cross_attention_projections(unet).items()}


def _rows(ldm, prompts) -> list[torch.Tensor]:
    """Every token row of each prompt (RECE's official ``all``)."""
    hidden, _ = token_embeddings(ldm.text_encoder, ldm.tokenizer, prompts)
    return [h.double() for h in hidden]


def _rece(ldm, **settings):
    return rece_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, PROMPTS,
                      RECEParams(guides=GUIDES, preserve=PRESERVE, **settings), progress=False)


@pytest.fixture(scope="module")
def uce(ldm):
    return uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, PROMPTS, guides=GUIDES, preserve=PRESERVE)


@pytest.fixture(scope="module")
def rece(ldm):
    before = hash_modules(ldm.unet)
    result = _rece(ldm)
    assert hash_modules(ldm.unet) == before, "rece_erase modified its input UNet"
    return result


def test_rece_maps_its_last_adversarial_embedding_to_the_guide_closer_than_uce(ldm, uce, rece):
    """The defining property: the last attack's c' is sent by every edited K/V to the guide's output."""
    w_uce, w_rece = _weights(uce.unet), _weights(rece.unet)
    adversarial, guides = torch.cat(rece.adversarial), torch.cat(_rows(ldm, GUIDES))
    for name in w_uce:
        target = guides @ w_uce[name].T  # one epoch: the repair starts from the UCE weights
        gap_rece = (adversarial @ w_rece[name].T - target).norm() / target.norm()
        gap_uce = (adversarial @ w_uce[name].T - target).norm() / target.norm()
        assert gap_rece < 0.1, f"{name}: RECE leaves c' {gap_rece:.3f} from the guide's output"
        assert gap_rece < 0.25 * gap_uce, f"{name}: RECE {gap_rece:.3f} is not well below UCE {gap_uce:.3f}"
    assert rece.history[-1]["guide_gap_after"] < 0.1 * rece.history[-1]["guide_gap_before"]


def test_each_epoch_attacks_the_previous_model_and_repairs_it(ldm):
    one, two = _rece(ldm, epochs=1), _rece(ldm, epochs=2)
    w_orig, w_one, w_two = _weights(ldm.unet), _weights(one.unet), _weights(two.unet)
    names = list(w_orig)
    for rows, adv in zip(_rows(ldm, PROMPTS), two.adversarial):
        expected = adversarial_embedding(rows, [w_one[n] for n in names], [w_orig[n] for n in names], 1e-3)
        torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-6)
    adversarial, guides = torch.cat(two.adversarial), torch.cat(_rows(ldm, GUIDES))
    for name in names:
        target = guides @ w_one[name].T
        assert (adversarial @ w_two[name].T - target).norm() < 0.1 * (adversarial @ w_one[name].T - target).norm()
    # the attack does worse on each repaired model: RECE's point
    gaps = [h["attack_gap"] for h in two.history]
    assert gaps[1] > gaps[0] + 1e-4, gaps


def test_adversarial_embedding_satisfies_its_optimality_condition(ldm, uce):
    w_orig, w_uce = _weights(ldm.unet), _weights(uce.unet)
    names = list(w_orig)
    concept = _rows(ldm, PROMPTS[:1])[0]
    lam = 0.05
    adv = adversarial_embedding(concept, [w_uce[n] for n in names], [w_orig[n] for n in names], lam)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return sum(((x @ w_uce[n].T - concept @ w_orig[n].T) ** 2).sum() for n in names) + lam * (x**2).sum()

    def gradient(x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x), x)
        return grad

    assert gradient(adv).norm() < 1e-9 * gradient(concept).norm()
    nudge = torch.randn(adv.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert objective(adv) < objective(adv + 1e-3 * nudge)
    # UCE moved the concept's own embedding away from its old output; the attack undoes most of that
    assert objective(adv) < 0.5 * objective(concept)


def test_repair_is_uces_closed_form_from_the_uce_weights(ldm, uce, rece):
    guides = torch.cat(_rows(ldm, GUIDES))
    retain = torch.cat(_rows(ldm, ["", *PRESERVE]))
    keys = torch.cat([torch.cat(rece.adversarial), retain])
    scales = torch.cat([torch.full((len(guides),), 1.0), torch.full((len(retain),), 0.1)])
    for name, w in _weights(uce.unet).items():
        targets = torch.cat([guides, retain]) @ w.T
        expected = closed_form_weight(w, keys, targets, scales, 0.1)
        torch.testing.assert_close(_weights(rece.unet)[name], expected, rtol=1e-4, atol=1e-5)
    assert rece.info["retain"] == ["", *PRESERVE]


def test_rece_changes_only_cross_attention_keys_and_values(ldm, rece):
    old, new = dict(ldm.unet.named_parameters()), dict(rece.unet.named_parameters())
    kv = sorted(n for n in old if ".attn2.to_k.weight" in n or ".attn2.to_v.weight" in n)
    assert sorted(rece.edited) == kv and len(kv) == 8
    changed = sorted(n for n in old if not torch.equal(old[n], new[n]))
    assert changed == kv


def test_rece_is_deterministic(ldm, rece):
    again = _rece(ldm)
    for name, weight in rece.edited.items():
        assert torch.equal(weight, again.edited[name])


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"epochs": 0}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"regular_scale": -1.0}, "regular_scale"),
     ({"rece_lamb": -0.1}, "rece_lamb"), ({"rece_erase_scale": 0.0}, "rece_erase_scale"),
     ({"rece_token": "middle"}, "rece_token")],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve_params("rece", settings)


def test_official_defaults():
    params = resolve_params("rece", {})
    assert (params["epochs"], params["regular_scale"], params["rece_lamb"]) == (1, 1e-3, 0.1)
    assert (params["rece_erase_scale"], params["rece_preserve_scale"], params["rece_token"]) == (1.0, 0.1, "all")
    assert params["projections"] == ["to_k", "to_v"]
