"""What SalUn, EraseDiff and Scissorhands share: the sets, the pseudo prompts, the losses, the global ranking."""

from __future__ import annotations

import pytest
import torch

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.core.models import encode_prompts
from memories_lib.erasure import resolve_params
from memories_lib.erasure.training import paired_guides
from memories_lib.erasure.unlearning import (
    UnlearningParams,
    forget_loss,
    global_top,
    index_batches,
    trained_names,
    unlearning_sets,
)

METHODS = ("salun", "erasediff", "scissorhands")
NO_PRESERVE = ConceptPrompts("triangle", ("a triangle",), ("a shape",))
CONCEPT = ConceptPrompts("triangle", ("a triangle",), ("a shape",), ("a star",))


@pytest.mark.parametrize("method", METHODS)
def test_an_empty_retain_set_is_refused_clearly(method):
    with pytest.raises(ValueError, match=f"{method} needs prompts to preserve.*preserve is empty"):
        resolve_params(method, {}, NO_PRESERVE)
    resolve_params(method, {"preserve": ["a star"]}, NO_PRESERVE)  # given explicitly, it runs


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [{"train_method": "attn"}, {"lr": 0.0}, {"epochs": 0}, {"forget_samples": 0},
                                 {"guides": []}])
def test_bad_shared_settings_are_refused_with_their_names(method, bad):
    with pytest.raises(ValueError, match=f"{method}.*{next(iter(bad))}"):
        resolve_params(method, bad, CONCEPT)


def test_guides_pair_one_per_prompt_or_one_for_all():
    assert paired_guides("SalUn", ["a", "b"], "x") == ["x", "x"]
    assert paired_guides("SalUn", ["a", "b"], ["x"]) == ["x", "x"]
    assert paired_guides("SalUn", ["a", "b"], ["x", "y"]) == ["x", "y"]
    with pytest.raises(ValueError, match="SalUn: 3 guides for 2 prompts; give one pseudo prompt for all"):
        paired_guides("SalUn", ["a", "b"], ["x", "y", "z"], "pseudo prompt")
    with pytest.raises(ValueError, match="0 guides for 2 prompts"):
        paired_guides("AC", ["a", "b"], None)


def test_global_top_ranks_all_tensors_together_and_breaks_ties_by_position():
    scores = {"a": torch.tensor([[0.1, 5.0], [3.0, 0.2]]), "b": torch.tensor([0.5, 4.0, 0.1, 2.0])}
    top = global_top(scores, 3)
    assert top["a"].tolist() == [[False, True], [True, False]] and top["b"].tolist() == [False, True, False, False]
    low = global_top(scores, 2, largest=False)  # 0.1 twice: the first one in order wins a tie, then 0.1 again
    assert low["a"].tolist() == [[True, False], [False, False]] and low["b"].tolist() == [False, False, True, False]
    assert sum(int(m.sum()) for m in global_top(scores, 8).values()) == 8
    with pytest.raises(ValueError, match="cannot select 9 of 8"):
        global_top(scores, 9)


def test_index_batches_are_seeded_passes_over_every_item():
    batches = index_batches(5, 2, torch.Generator().manual_seed(0))
    first = [next(batches) for _ in range(3)]
    assert [len(b) for b in first] == [2, 2, 1] and sorted(torch.cat(first).tolist()) == [0, 1, 2, 3, 4]
    again = index_batches(5, 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(b, next(again)) for b in first)


def test_trained_names_follow_the_official_train_methods(ldm):
    every = [n for n, _ in ldm.unet.named_parameters()]
    assert trained_names(ldm.unet, "full") == every
    assert all("attn2." in n for n in trained_names(ldm.unet, "xattn"))
    noxattn = trained_names(ldm.unet, "noxattn")
    assert not any("attn2." in n or n.startswith(("time_embedding.", "conv_out.")) for n in noxattn)


def test_sets_come_from_the_prompts_and_preserve_and_the_forget_loss_targets_the_pseudo_prompt(ldm):
    params = UnlearningParams(guides=["a star", "a circle"], preserve=["a square"], forget_samples=3,
                              retain_samples=2, sample_steps=2)
    sets = unlearning_sets(ldm, ["a triangle", "a red triangle"], params, torch.Generator().manual_seed(0))
    assert sets.forget.prompts == ("a triangle", "a red triangle") and sets.retain.prompts == ("a square",)
    assert len(sets.forget) == 3 and len(sets.retain) == 2 and sets.pseudo_prompts == ("a star", "a circle")
    z0, cond, pseudo = sets.forget_batch(torch.tensor([1, 2]))
    with torch.no_grad():
        assert torch.equal(pseudo, encode_prompts(ldm, ["a circle", "a star"]))  # latent 2 came from prompt 0
        assert torch.equal(cond, encode_prompts(ldm, ["a red triangle", "a triangle"]))
        # the concept prompt already predicting like its pseudo prompt: nothing to learn
        assert float(forget_loss(ldm.unet, ldm, z0, cond, cond, torch.Generator().manual_seed(1))) == 0.0
        assert float(forget_loss(ldm.unet, ldm, z0, cond, pseudo, torch.Generator().manual_seed(1))) > 0
    with pytest.raises(ValueError, match="3 guides for 2 prompts; give one pseudo prompt for all"):
        unlearning_sets(ldm, ["a triangle", "a red triangle"], UnlearningParams(guides=["x", "y", "z"],
                                                                                preserve=["a square"]),
                        torch.Generator())
