"""UCE, ESD, published checkpoints and cached erased models on a tiny random SD-layout model."""

from __future__ import annotations

import pytest
import torch

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.core.models import hash_modules, load_ldm
from memories_lib.erasure import (
    ESDConfig,
    cross_attention_projections,
    erase,
    erased_path,
    esd_erase,
    esd_parameter_names,
    read_info,
    token_embeddings,
    uce_debias,
    uce_erase,
    uce_moderate,
)
from memories_lib.erasure import registry as registry_module

ERASE, GUIDE = "a triangle", "a circle"
PRESERVE = ["a star", "a square", "a red cross"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "cache"))


def _last_token(ldm, prompts):
    hidden, last = token_embeddings(ldm.text_encoder, ldm.tokenizer, prompts)
    return torch.stack([hidden[i, last[i]] for i in range(len(prompts))]).double()


def _is_cross_kv_weight(name: str) -> bool:
    return ".attn2.to_k.weight" in name or ".attn2.to_v.weight" in name


# --------------------------------------------------------------------------- UCE


@pytest.fixture(scope="module")
def erased(ldm):
    before = hash_modules(ldm.unet)
    result = uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ERASE, guides=GUIDE, preserve=PRESERVE)
    assert hash_modules(ldm.unet) == before, "uce_erase modified its input UNet"
    return result


def test_uce_changes_only_cross_attention_keys_and_values(ldm, erased):
    old = dict(ldm.unet.named_parameters())
    new = dict(erased.unet.named_parameters())
    assert erased.unet is not ldm.unet
    kv = sorted(n for n in old if _is_cross_kv_weight(n))
    assert len(kv) == 8  # 4 cross-attention blocks in the tiny UNet, to_k and to_v each
    assert sorted(erased.edited) == kv
    for name, param in old.items():
        if _is_cross_kv_weight(name):
            assert not torch.equal(param, new[name]), f"{name} was not edited"
            assert torch.equal(erased.edited[name], new[name])
        else:
            assert torch.equal(param, new[name]), f"{name} changed although it is not a cross-attention k/v weight"
    for name, buf in ldm.unet.named_buffers():
        assert torch.equal(buf, dict(erased.unet.named_buffers())[name])


def test_uce_weight_is_the_minimiser_of_its_objective(ldm, erased):
    """The gradient of lambda|W-W0|^2 + |W c_e - W0 c_g|^2 + |W C_p - W0 C_p|^2 vanishes at the edit."""
    c_e, c_g = _last_token(ldm, [ERASE, GUIDE])
    c_p = _last_token(ldm, PRESERVE)
    lamb = erased.info["lamb"]
    old = cross_attention_projections(ldm.unet)
    new = cross_attention_projections(erased.unet)
    for name in old:
        w0, w = old[name].weight.double(), new[name].weight.double()

        def grad(m):
            return (
                lamb * (m - w0)
                + torch.outer(m @ c_e - w0 @ c_g, c_e)
                + (m @ c_p.T - w0 @ c_p.T) @ c_p
            )

        scale = grad(w0).norm()
        assert scale > 1e-3, "the erased and guide concepts should differ in the old model"
        assert grad(w).norm() < 1e-4 * scale, name


def test_uce_maps_the_erased_concept_to_the_guide_and_keeps_the_preserved(ldm, erased):
    """Tolerances: the tiny encoder's embeddings are nearly collinear (cosine ~0.95), lambda = 0.5."""
    c_e, c_g = _last_token(ldm, [ERASE, GUIDE])
    c_p = _last_token(ldm, PRESERVE)
    old = cross_attention_projections(ldm.unet)
    new = cross_attention_projections(erased.unet)
    for name in old:
        w0, w = old[name].weight.double(), new[name].weight.double()
        target = w0 @ c_g
        before = (w0 @ c_e - target).norm() / target.norm()
        after = (w @ c_e - target).norm() / target.norm()
        assert after < 0.08, f"{name}: erased output is {after:.3f} (relative) from the guide's"
        assert after < 0.25 * before, f"{name}: only moved from {before:.3f} to {after:.3f}"
        kept = ((w @ c_p.T - w0 @ c_p.T).norm(dim=0) / (w0 @ c_p.T).norm(dim=0)).max()
        assert kept < 0.05, f"{name}: a preserved concept moved by {kept:.3f} (relative)"


def test_uce_moderation_guides_towards_the_empty_prompt(ldm):
    result = uce_moderate(ldm.unet, ldm.text_encoder, ldm.tokenizer, [ERASE], lamb=1e-6, projections=("to_v",))
    assert result.method == "moderate"
    assert all(name.endswith("attn2.to_v.weight") for name in result.edited)
    c_e, c_empty = _last_token(ldm, [ERASE, ""])
    for name, layer in cross_attention_projections(ldm.unet, ("to_v",)).items():
        w = result.edited[f"{name}.weight"].double()
        target = layer.weight.double() @ c_empty
        # With lambda -> 0 and no preserved prompts the erased key maps exactly onto the guide.
        assert torch.allclose(w @ c_e, target, atol=1e-4 * target.norm())


def test_uce_rejects_bad_requests(ldm):
    with pytest.raises(ValueError, match="guides"):
        uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ["a star", "a cross"], guides=["a", "b", "c"])
    with pytest.raises(ValueError, match="both erased and preserved"):
        uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ERASE, preserve=[ERASE])
    with pytest.raises(ValueError, match="token"):
        uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ERASE, token="first")
    with pytest.raises(ValueError, match="projections"):
        uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ERASE, projections=("to_q",))


def test_uce_tail_tokens_edit_every_position_after_the_concept(ldm):
    result = uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ERASE, guides=GUIDE, token="tail", lamb=1e-6)
    hidden, last = token_embeddings(ldm.text_encoder, ldm.tokenizer, [ERASE, GUIDE])
    assert last == [2, 2]  # "<bos> a triangle <eos>": the concept word is at position 2
    name = next(iter(cross_attention_projections(ldm.unet)))
    w0 = cross_attention_projections(ldm.unet)[name].weight.double()
    w = result.edited[f"{name}.weight"].double()
    keys, guides = hidden[0, 2:].double(), hidden[1, 2:].double()
    # 14 key rows in 32 dimensions with lambda ~ 0: every row maps onto its guide row.
    err = (keys @ w.T - guides @ w0.T).norm(dim=1) / (guides @ w0.T).norm(dim=1)
    assert err.max() < 1e-3


def _ratio_probe(ldm):
    """A stand-in for a classifier: how strongly the mid-block value of "a shape" points to red vs blue."""
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"
    c, red, blue = _last_token(ldm, ["a shape", "red", "blue"]).float()
    w0 = cross_attention_projections(ldm.unet)[name].weight.detach().clone()
    directions = torch.stack([w0 @ red, w0 @ blue])
    calls = []

    def measure(unet):
        calls.append(1)
        w = cross_attention_projections(unet)[name].weight.detach()
        score = directions @ (w @ c)
        p = torch.softmax((score - score.mean()) / 0.5, dim=0)
        return {"red": float(p[0]), "blue": float(p[1])}

    return measure, calls


def test_uce_debias_reaches_the_desired_ratio(ldm):
    measure, calls = _ratio_probe(ldm)
    start = measure(ldm.unet)
    assert abs(start["red"] - 0.5) > 0.3, "the probe should start far from balanced"
    calls.clear()
    result = uce_debias(
        ldm.unet, ldm.text_encoder, ldm.tokenizer, "a shape", ["red", "blue"], measure, progress=False
    )
    assert result.info["converged"]
    assert len(result.history) == len(calls) <= 31
    assert len(result.history) >= 2
    final = measure(result.unet)
    assert final == result.history[-1]["ratios"]["a shape"]
    assert abs(final["red"] - 0.5) < 0.05 and abs(final["blue"] - 0.5) < 0.05
    # The edit raised blue's weight and lowered red's.
    alphas = result.history[-1]["alphas"]["a shape"]
    assert alphas["blue"] > 0 > alphas["red"]
    assert sorted(result.edited) == sorted(n for n, _ in ldm.unet.named_parameters() if _is_cross_kv_weight(n))


def test_uce_debias_leaves_a_balanced_model_alone(ldm):
    measure, _ = _ratio_probe(ldm)
    result = uce_debias(
        ldm.unet, ldm.text_encoder, ldm.tokenizer, "a shape", ["red", "blue"], measure, max_diff=1.0, progress=False
    )
    assert result.info["converged"] and len(result.history) == 1 and result.edited == {}
    assert result.unet is not ldm.unet
    assert hash_modules(result.unet) == hash_modules(ldm.unet)
    with pytest.raises(ValueError, match="no ratio for attribute"):
        uce_debias(ldm.unet, ldm.text_encoder, ldm.tokenizer, "a shape", ["red", "green"], measure, progress=False)


# --------------------------------------------------------------------------- ESD


@pytest.mark.parametrize("method", ["esd-x", "esd-u"])
def test_esd_trains_only_its_parameter_set(ldm, method):
    before = hash_modules(ldm.unet)
    config = ESDConfig(method=method, iterations=3, lr=1e-3, ddim_steps=4)
    result = esd_erase(
        ldm.unet, ldm.text_encoder, ldm.tokenizer, ldm.scheduler, ERASE, config,
        generator=torch.Generator().manual_seed(0), progress=False,
    )
    assert hash_modules(ldm.unet) == before, "ESD modified the frozen UNet"
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert all(0 <= k < 4 for k in result.steps)
    old, new = dict(ldm.unet.named_parameters()), dict(result.unet.named_parameters())
    changed = {n for n in old if not torch.equal(old[n], new[n])}
    assert changed, "no parameter changed"
    assert changed <= set(result.trained) == set(esd_parameter_names(ldm.unet, method))
    if method == "esd-x":
        assert all("attn2." in n for n in changed)
    else:
        assert not any("attn2." in n for n in changed)
        assert not any(n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for n in changed)
    assert not any(p.requires_grad for p in result.unet.parameters())


def test_esd_moves_the_concept_prediction_towards_the_negative_guidance_target(ldm):
    """After training, the student's prediction for the concept is closer to e_0 - (e_c - e_0)."""
    from memories_lib.core.models import encode_prompts

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4, 4, 8, 8, generator=gen)
    cond, uncond = encode_prompts(ldm, [ERASE, ""]).chunk(2)
    cond, uncond = cond.expand(4, -1, -1), uncond.expand(4, -1, -1)

    def gap(unet):
        total = 0.0
        with torch.no_grad():
            for t in (900, 500, 100):
                e_0 = ldm.unet(z, t, encoder_hidden_states=uncond).sample
                e_c = ldm.unet(z, t, encoder_hidden_states=cond).sample
                total += torch.nn.functional.mse_loss(unet(z, t, encoder_hidden_states=cond).sample, 2 * e_0 - e_c).item()
        return total

    config = ESDConfig(method="esd-x", iterations=20, lr=1e-3, ddim_steps=4)
    result = esd_erase(
        ldm.unet, ldm.text_encoder, ldm.tokenizer, ldm.scheduler, ERASE, config,
        generator=torch.Generator().manual_seed(0), progress=False,
    )
    assert gap(result.unet) < 0.5 * gap(ldm.unet)


def test_esd_is_deterministic_given_the_generator(ldm):
    config = ESDConfig(method="esd-x", iterations=2, lr=1e-3, ddim_steps=3)
    runs = [
        esd_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ldm.scheduler, ERASE, config,
                  generator=torch.Generator().manual_seed(7), progress=False)
        for _ in range(2)
    ]
    assert runs[0].losses == runs[1].losses and runs[0].steps == runs[1].steps
    assert hash_modules(runs[0].unet) == hash_modules(runs[1].unet)


def test_esd_config_is_validated():
    with pytest.raises(ValueError, match="esd-x"):
        ESDConfig(method="esd-all")
    with pytest.raises(ValueError, match="learning rate"):
        ESDConfig(lr=0)


# --------------------------------------------------------------------------- cached erased models

CONCEPT = ConceptPrompts("triangle", (ERASE, "a red triangle"), (GUIDE, "a red circle"), tuple(PRESERVE))


def test_erased_model_is_saved_loadable_and_reused(ldm, monkeypatch, tmp_path):
    first = erase(ldm, "uce", CONCEPT, progress=False)
    assert not first.from_cache
    assert first.path.parent == tmp_path / "cache" / "erased" and first.path.name.startswith("uce-triangle-")
    assert first.path == erased_path(ldm, "uce", CONCEPT)
    info = read_info(first.path)
    assert info["base_hash"] == ldm.weights_hash() and info["params"]["lamb"] == 0.5
    assert info["prompts"] == list(CONCEPT.prompts) and len(info["edited"]) == 8
    # the concept's own guides and preserved prompts, unless the parameters set them
    assert first.params["guides"] == list(CONCEPT.guides) and first.params["preserve"] == PRESERVE

    loaded = first.load(load_ldm)
    direct = uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, list(CONCEPT.prompts), guides=list(CONCEPT.guides),
                       preserve=PRESERVE)
    assert hash_modules(loaded.unet) == hash_modules(direct.unet)
    assert hash_modules(loaded.text_encoder) == hash_modules(ldm.text_encoder)
    assert hash_modules(loaded.vae) == hash_modules(ldm.vae)

    def boom(*args, **kwargs):
        raise AssertionError("the cached erased model was recomputed")

    monkeypatch.setattr(registry_module, "uce_erase", boom)
    second = erase(ldm, "uce", CONCEPT, progress=False)
    assert second.from_cache and second.path == first.path and second.info == info

    # Any parameter change is a different model (and would be computed).
    assert erased_path(ldm, "uce", CONCEPT, {"lamb": 0.1}) != first.path
    with pytest.raises(AssertionError, match="recomputed"):
        erase(ldm, "uce", CONCEPT, {"lamb": 0.1}, progress=False)
    # So is a change of the concept's prompts.
    other = ConceptPrompts("triangle", (ERASE,), (GUIDE,), tuple(PRESERVE))
    assert erased_path(ldm, "uce", other) != first.path


def test_esd_erased_model_records_its_losses(ldm):
    params = {"iterations": 2, "lr": 1e-4, "ddim_steps": 2, "seed": 3}
    model = erase(ldm, "esd-u", CONCEPT, params, progress=False)
    assert model.info["params"]["negative_guidance"] == 1.0 and len(model.info["losses"]) == 2
    assert "preserve" not in model.params and model.info["prompts"] == list(CONCEPT.prompts)
    assert erase(ldm, "esd-u", CONCEPT, params).from_cache


def test_debiasing_edits_the_shortest_prompt_only(ldm):
    ratios = iter([{"red": 0.8, "blue": 0.2}, {"red": 0.5, "blue": 0.5}])
    params = {"attributes": ["red", "blue"], "measure": "planted ratios", "max_iterations": 3}
    model = erase(ldm, "uce-debias", CONCEPT, params, measure_ratio=lambda unet: next(ratios), progress=False)
    assert model.info["prompts"] == [CONCEPT.prompt] and model.info["converged"]


def test_erase_rejects_bad_requests(ldm):
    with pytest.raises(ValueError, match="unknown erasure method 'forget-all'.*esd-x"):
        erase(ldm, "forget-all", CONCEPT)
    with pytest.raises(ValueError, match="unknown parameter.*lambda"):
        erase(ldm, "uce", CONCEPT, {"lambda": 0.5})
    with pytest.raises(ValueError, match="needs the parameter.*measure"):
        erase(ldm, "uce-debias", CONCEPT, {"attributes": ["red", "blue"]})
    with pytest.raises(ValueError, match="learning rate"):
        erase(ldm, "esd-x", CONCEPT, {"lr": 0})
    with pytest.raises(ValueError, match="at least one prompt"):
        ConceptPrompts("triangle", (), ())
    with pytest.raises(ValueError, match="non-empty concept prompts"):
        erase(ldm, "esd-x", ConceptPrompts("star", ("a star", " "), ("", "")), {"iterations": 1})


def test_published_checkpoint_is_applied_per_concept(ldm, tmp_path):
    state = {k: v + 0.01 for k, v in ldm.unet.state_dict().items()}
    torch.save(state, tmp_path / "esd-triangle.pt")
    params = {"paths": {"triangle": str(tmp_path / "esd-triangle.pt")}}
    model = erase(ldm, "checkpoint", CONCEPT, params)
    assert model.path is None and model.ldm is not None
    assert torch.equal(model.load(load_ldm).unet.state_dict()["conv_in.weight"], state["conv_in.weight"])
    assert hash_modules(model.ldm.vae) == hash_modules(ldm.vae)
    with pytest.raises(ValueError, match="no file for the concept 'star'"):
        erase(ldm, "checkpoint", ConceptPrompts("star", ("a star",), ("",)), params)
    with pytest.raises(ValueError, match="component must be one of"):
        erase(ldm, "checkpoint", CONCEPT, {**params, "component": "vae"})


def test_esd_with_several_prompts_trains_on_each(ldm):
    config = ESDConfig(method="esd-x", iterations=6, lr=1e-3, ddim_steps=2)
    prompts = [ERASE, "a red triangle", "a triangle on a striped background"]
    result = esd_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ldm.scheduler, prompts, config,
                       generator=torch.Generator().manual_seed(0), progress=False)
    assert result.info["prompts"] == prompts and len(result.losses) == 6
    single = esd_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, ldm.scheduler, ERASE, config,
                       generator=torch.Generator().manual_seed(0), progress=False)
    assert hash_modules(single.unet) != hash_modules(result.unet)


# --------------------------------------------------------------------------- judging generations


def test_judged_generations_are_classified_and_cached(ldm, tmp_path, monkeypatch):
    from memories_lib.core.judging import judged_generations
    from memories_lib.core import judging
    from memories_lib.worlds.shapes.classifier import HEADS, ShapesClassifier
    from memories_lib.core.store import Store

    torch.manual_seed(0)
    classifier = ShapesClassifier(channels=(4, 4)).eval()
    store = Store(tmp_path / "store")
    prompts = ["a red triangle", "a blue star", "a circle"]
    kwargs = dict(seed=3, num_steps=2, guidance_scale=2.0, store=store, progress=False)
    first = judged_generations(ldm, classifier, prompts, **kwargs)
    assert first.images.shape == (3, 3, 32, 32) and 0 <= first.images.min() and first.images.max() <= 1
    assert set(first.labels) == set(HEADS) and first.proba["shape"].shape == (3, len(HEADS["shape"]))
    expected = first.proba["shape"].argmax(-1)
    assert list(first.labels["shape"]) == [HEADS["shape"][i] for i in expected]
    shape = first.labels["shape"][0]
    assert first.accuracy("shape", shape) == pytest.approx((first.labels["shape"] == shape).mean())
    assert sum(first.share("colour").values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no classifier head"):
        first.accuracy("size", "big")

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although the result is stored")

    monkeypatch.setattr(judging, "regenerate", boom)
    again = judged_generations(ldm, classifier, prompts, **kwargs)
    assert torch.equal(again.images, first.images) and list(again.labels["colour"]) == list(first.labels["colour"])
    with pytest.raises(AssertionError, match="regenerated"):
        judged_generations(ldm, classifier, prompts, **{**kwargs, "seed": 4})


def test_generations_are_stored_without_their_judge_and_judged_on_load(ldm, tmp_path, monkeypatch):
    from memories_lib.core import judging
    from memories_lib.core.judging import generation_parts, judged_generations
    from memories_lib.core.store import Store
    from memories_lib.worlds.shapes.classifier import ShapesClassifier

    def classifier(seed: int) -> ShapesClassifier:
        torch.manual_seed(seed)
        return ShapesClassifier(channels=(4, 4)).eval()

    first_judge, second_judge = classifier(0), classifier(1)
    assert first_judge.identity() != second_judge.identity()
    store = Store(tmp_path / "store")
    prompts = ["a red triangle", "a blue star", "a circle"]
    kwargs = dict(seed=3, num_steps=2, guidance_scale=2.0, store=store, progress=False)
    first = judged_generations(ldm, first_judge, prompts, **kwargs)
    # One entry: the images as uint8, under a key of what determines them (no judge in it).
    [meta_file] = list((tmp_path / "store").rglob("*.json"))
    parts = generation_parts(ldm.weights_hash(), prompts, seed=3, num_steps=2, guidance_scale=2.0)
    entry = store.get(store.key(**parts))
    assert entry is not None and meta_file.stem == entry.key and "classifier" not in entry.parts
    assert set(entry.tensors) == {"images"} and entry.tensors["images"].dtype == torch.uint8

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although the images are stored")

    monkeypatch.setattr(judging, "regenerate", boom)
    second = judged_generations(ldm, second_judge, prompts, **kwargs)
    assert len(list((tmp_path / "store").rglob("*.json"))) == 1
    assert torch.equal(second.images, first.images)
    expected = second_judge.predict_proba(first.images)
    assert all(torch.equal(second.proba[h], expected[h]) for h in expected)
    assert any(not torch.equal(second.proba[h], first.proba[h]) for h in expected)
    monkeypatch.undo()
    # What the second detector says of the stored images is what it says of a fresh computation.
    fresh = judged_generations(ldm, second_judge, prompts, **{**kwargs, "store": Store(tmp_path / "fresh")})
    assert torch.equal(fresh.images, second.images)
    assert all(torch.equal(fresh.proba[h], second.proba[h]) for h in fresh.proba)
    assert all(list(fresh.labels[h]) == list(second.labels[h]) for h in fresh.labels)
