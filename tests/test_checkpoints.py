"""Loading published-style erased checkpoints into a tiny random SD-layout pipeline saved to disk."""

from __future__ import annotations

import copy

import pytest
import torch

from memories_lib.erasure import (
    CheckpointError,
    apply_text_encoder,
    apply_unet_checkpoint,
    load_erased,
    load_text_encoder,
    read_state_dict,
    save_unet_weights,
    uce_erase,
)
from memories_lib.core.models import hash_modules


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def other_unet(ldm):
    """A UNet of the same architecture with different weights (the 'erased' one)."""
    unet = copy.deepcopy(ldm.unet)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return unet


def _assert_base_untouched(ldm, base_hash):
    assert hash_modules(ldm.unet, ldm.vae, ldm.text_encoder) == base_hash


# --------------------------------------------------------------------------- full .pt state dicts


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,                                             # UnlearnDiffAtk: a plain diffusers state dict
        lambda sd: {"state_dict": sd, "global_step": 1000},        # nested, with metadata
        lambda sd: {f"module.{k}": v for k, v in sd.items()},      # DataParallel prefix
        lambda sd: {"unet": {f"unet.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "nested", "module-prefix", "unet-nested-prefix"],
)
def test_full_unet_state_dict_is_applied_to_a_copy(ldm, other_unet, tmp_path, wrap):
    base_hash = hash_modules(ldm.unet, ldm.vae, ldm.text_encoder)
    path = tmp_path / "ESD-church.pt"
    torch.save(wrap(other_unet.state_dict()), path)
    erased = apply_unet_checkpoint(ldm, path)
    _assert_base_untouched(ldm, base_hash)
    assert erased.unet is not ldm.unet
    assert hash_modules(erased.unet) == hash_modules(other_unet)
    assert erased.vae is ldm.vae and erased.text_encoder is ldm.text_encoder
    assert erased.weights_hash() != ldm.weights_hash()
    assert str(path) in erased.source


def test_partial_pt_is_refused_unless_asked_for(ldm, other_unet, tmp_path):
    path = tmp_path / "partial.pt"
    subset = {k: v for k, v in other_unet.state_dict().items() if "attn2" in k}
    torch.save(subset, path)
    with pytest.raises(CheckpointError, match=r"partial\.pt.*not a full state dict"):
        apply_unet_checkpoint(ldm, path)
    erased = apply_unet_checkpoint(ldm, path, partial=True)
    new, old, ref = erased.unet.state_dict(), ldm.unet.state_dict(), other_unet.state_dict()
    for k in new:
        assert torch.equal(new[k], ref[k] if "attn2" in k else old[k]), k


# --------------------------------------------------------------------------- partial .safetensors (UCE)


def test_uce_safetensors_edit_round_trips(ldm, tmp_path):
    result = uce_erase(ldm.unet, ldm.text_encoder, ldm.tokenizer, "a triangle", preserve=["a star"])
    path = save_unet_weights(tmp_path / "uce-triangle.safetensors", result.edited)
    assert set(read_state_dict(path)) == set(result.edited)
    erased = apply_unet_checkpoint(ldm, path)
    assert hash_modules(erased.unet) == hash_modules(result.unet)


# --------------------------------------------------------------------------- bad files


def test_missing_file_names_the_file(ldm, tmp_path):
    path = tmp_path / "no-such-model.pt"
    with pytest.raises(CheckpointError, match="no-such-model.pt does not exist"):
        apply_unet_checkpoint(ldm, path)


def test_wrong_shapes_are_reported(ldm, other_unet, tmp_path):
    state = other_unet.state_dict()
    name = "conv_in.weight"
    state[name] = torch.zeros(8, 4, 3, 3)
    path = tmp_path / "wrong-shape.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"wrong-shape\.pt has 1 tensor\(s\) of the wrong shape.*conv_in\.weight"):
        apply_unet_checkpoint(ldm, path)


def test_unknown_keys_are_reported(ldm, other_unet, tmp_path):
    state = dict(other_unet.state_dict())
    state["encoder.layers.0.weight"] = torch.zeros(3)
    path = tmp_path / "foreign.safetensors"
    save_unet_weights(path, state)
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors has 1 key\(s\).*encoder\.layers\.0\.weight"):
        apply_unet_checkpoint(ldm, path)


def test_compvis_layout_gets_a_hint(ldm, tmp_path):
    path = tmp_path / "compvis.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="CompVis"):
        apply_unet_checkpoint(ldm, path)


class _Payload:
    """Unpickling this would create a file: the kind of object weights_only must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_arbitrary_objects_is_refused(ldm, other_unet, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.pt"
    torch.save({**other_unet.state_dict(), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"malicious\.pt was refused by torch\.load\(weights_only=True\)"):
        apply_unet_checkpoint(ldm, path)
    assert not marker.exists(), "the pickle's payload ran"


@pytest.mark.parametrize("name", ["garbage.pt", "garbage.safetensors"])
def test_corrupt_files_are_reported(ldm, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        apply_unet_checkpoint(ldm, path)


def test_unknown_suffix_and_non_dict_are_reported(ldm, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown suffix"):
        apply_unet_checkpoint(ldm, path)
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        apply_unet_checkpoint(ldm, path)


# --------------------------------------------------------------------------- replacement text encoders (AdvUnlearn)


@pytest.fixture(scope="module")
def advunlearn_folder(ldm, tmp_path_factory):
    """An AdvUnlearn-style folder: one transformers text encoder per concept subfolder."""
    root = tmp_path_factory.mktemp("advunlearn")
    encoder = copy.deepcopy(ldm.text_encoder)
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(1.01)
    encoder.save_pretrained(root / "triangle_unlearned")
    return root, encoder


def test_replacement_text_encoder_is_applied(ldm, advunlearn_folder):
    root, encoder = advunlearn_folder
    base_hash = hash_modules(ldm.unet, ldm.vae, ldm.text_encoder)
    loaded = load_text_encoder(root, subfolder="triangle_unlearned")
    assert hash_modules(loaded) == hash_modules(encoder)
    erased = apply_text_encoder(ldm, root, subfolder="triangle_unlearned")
    _assert_base_untouched(ldm, base_hash)
    assert erased.unet is ldm.unet and hash_modules(erased.text_encoder) == hash_modules(encoder)
    assert erased.weights_hash() != ldm.weights_hash()


def test_unet_and_text_encoder_together(ldm, other_unet, advunlearn_folder, tmp_path):
    root, encoder = advunlearn_folder
    path = tmp_path / "full.pt"
    torch.save(other_unet.state_dict(), path)
    erased = load_erased(ldm, unet=path, text_encoder=root, subfolder="triangle_unlearned")
    assert hash_modules(erased.unet) == hash_modules(other_unet)
    assert hash_modules(erased.text_encoder) == hash_modules(encoder)
    with pytest.raises(ValueError, match="needs a UNet checkpoint"):
        load_erased(ldm)


def test_bad_text_encoder_folders_are_reported(ldm, advunlearn_folder, tmp_path):
    root, _ = advunlearn_folder
    with pytest.raises(CheckpointError, match="star_unlearned does not exist"):
        load_text_encoder(root, subfolder="star_unlearned")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_text_encoder(tmp_path / "empty")
    from transformers import CLIPTextConfig, CLIPTextModel

    wide = CLIPTextModel(CLIPTextConfig(vocab_size=ldm.text_encoder.config.vocab_size, hidden_size=48,
                                        intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=16, eos_token_id=3))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(CheckpointError, match="hidden size 48 but the UNet's cross-attention expects 32"):
        apply_text_encoder(ldm, tmp_path / "wide")
