"""Published erased checkpoints of Stable Diffusion 1.4, loaded as the paper loaded them.

Three formats occur:

* a full UNet state dict in a ``.pt`` file, diffusers parameter names (the UnlearnDiffAtk
  benchmark's ESD, FMN, SalUn, Scissorhands, EraseDiff, SPM models). The paper's code
  calls ``unet.load_state_dict(torch.load(path))``; here the file is read with
  ``torch.load(weights_only=True)``, which refuses pickles that would run code. Dicts nested
  under a key such as ``"state_dict"`` and prefixes such as ``"module."`` or ``"unet."`` are
  unwrapped;
* a partial ``.safetensors`` file holding only the edited weights (UCE's current format: the
  ``attn2.to_k``/``to_v`` weights under their UNet module names; ESD's newer scripts write the
  trained parameters the same way);
* a replacement text encoder in a diffusers/transformers folder (AdvUnlearn, one subfolder per
  concept such as ``nudity_unlearned``).

Every problem (a missing file, a refused pickle, unknown keys, wrong shapes, missing keys in a
full state dict) raises :class:`CheckpointError` naming the file. Loading never changes the
base model: a new :class:`~memories_lib.models.LDM` is returned.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from pathlib import Path
from typing import Mapping

import torch
from transformers import CLIPTextModel

from ..core.models import LDM

#: Suffixes read with torch.load (weights only) and with safetensors.
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)

#: Keys under which training scripts nest a state dict.
NESTING_KEYS = ("state_dict", "model_state_dict", "unet", "model", "module")

#: Prefixes that wrappers (DataParallel, pipelines, Lightning) put before parameter names.
STRIP_PREFIXES = ("module.", "unet.", "model.")

#: Keys of the original CompVis/LDM layout, which needs a conversion this module does not do.
COMPVIS_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, refused, or does not fit the model."""


# --------------------------------------------------------------------------- reading


def _short_unpickling_reason(err: Exception) -> str:
    text = str(err)
    match = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    reason = match.group(1) if match else text.splitlines()[0] if text else type(err).__name__
    return reason.split(" Please use")[0].strip()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt``/``.pth``/``.bin``/``.ckpt`` (weights only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {err}") from err
    elif suffix in TORCH_SUFFIXES:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"checkpoint {path} was refused by torch.load(weights_only=True): "
                f"{_short_unpickling_reason(err)}. It contains objects other than tensors and plain "
                "containers; loading it fully could run arbitrary code, so it is not loaded."
            ) from err
        except Exception as err:  # a corrupt file fails anywhere inside the unpickler
            raise CheckpointError(
                f"checkpoint {path} is not a readable torch file: {type(err).__name__}: {err}"
            ) from err
    else:
        raise CheckpointError(
            f"checkpoint {path} has an unknown suffix {path.suffix!r}; expected one of "
            f"{TORCH_SUFFIXES + SAFETENSORS_SUFFIXES}"
        )
    return _unwrap(raw, path)


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the flat name -> tensor mapping inside what a checkpoint file held."""
    for _ in range(3):  # at most a few levels of nesting
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"checkpoint {path} holds a {type(raw).__name__}, not a state dict")
        nested = [k for k in NESTING_KEYS if isinstance(raw.get(k), Mapping)]
        if nested and not any(isinstance(v, torch.Tensor) for v in raw.values()):
            raw = raw[nested[0]]
            continue
        break
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors (keys: {sorted(map(str, raw))[:8]})")
    if not all(isinstance(k, str) for k in tensors):
        raise CheckpointError(f"checkpoint {path} has non-string keys")
    return tensors


def _fit_names(state: dict[str, torch.Tensor], expected: set[str], path: Path) -> dict[str, torch.Tensor]:
    """Strip a wrapper prefix shared by every key when that makes the names match ``expected``."""
    if set(state) <= expected:
        return state
    if any(k.startswith(COMPVIS_PREFIXES) for k in state):
        raise CheckpointError(
            f"checkpoint {path} is in the original CompVis/LDM layout (keys such as "
            f"{next(k for k in state if k.startswith(COMPVIS_PREFIXES))!r}); convert it to the diffusers "
            "layout first (diffusers' convert_original_stable_diffusion_to_diffusers script)"
        )
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) <= expected:
                return stripped
    return state


def check_state_dict(
    state: Mapping[str, torch.Tensor], module: torch.nn.Module, path: str | Path, *, partial: bool
) -> dict[str, torch.Tensor]:
    """Names adjusted to ``module``'s; raises when a key is unknown, a shape differs or (unless partial) a key is missing."""
    path = Path(path)
    reference = module.state_dict()
    state = _fit_names(dict(state), set(reference), path)
    unknown = sorted(set(state) - set(reference))
    if unknown:
        raise CheckpointError(
            f"checkpoint {path} has {len(unknown)} key(s) that the {type(module).__name__} does not have, "
            f"e.g. {unknown[:3]}"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(reference[k].shape)} in the model"
        for k, v in state.items()
        if tuple(v.shape) != tuple(reference[k].shape)
    ]
    if wrong:
        raise CheckpointError(f"checkpoint {path} has {len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[:3]}")
    if not partial:
        missing = sorted(set(reference) - set(state))
        if missing:
            raise CheckpointError(
                f"checkpoint {path} is not a full state dict of the {type(module).__name__}: {len(missing)} "
                f"key(s) missing, e.g. {missing[:3]} (pass partial=True for a file of edited weights only)"
            )
    return state


# --------------------------------------------------------------------------- applying


def apply_unet_checkpoint(ldm: LDM, path: str | Path, *, partial: bool | None = None) -> LDM:
    """A new LDM whose UNet carries the weights of ``path``; ``ldm`` is left untouched.

    ``partial`` (default: True for ``.safetensors``, False otherwise) allows files that hold only
    some of the UNet's weights (UCE's and ESD's edited-weights files).
    """
    path = Path(path)
    if partial is None:
        partial = path.suffix.lower() in SAFETENSORS_SUFFIXES
    state = check_state_dict(read_state_dict(path), ldm.unet, path, partial=partial)
    unet = copy.deepcopy(ldm.unet)
    reference = unet.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            reference[name].copy_(tensor.to(reference[name].dtype))
    return dataclasses.replace(ldm, unet=unet, source=f"{ldm.source}+unet:{path}", _hash=None)


def load_text_encoder(
    path: str | Path,
    subfolder: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CLIPTextModel:
    """A CLIP text encoder from a transformers folder (AdvUnlearn: ``subfolder="<concept>_unlearned"``)."""
    path = Path(path)
    folder = path / subfolder if subfolder else path
    if not folder.is_dir():
        raise CheckpointError(f"text encoder folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"text encoder folder {folder} has no config.json (not a transformers model folder)")
    try:
        encoder = CLIPTextModel.from_pretrained(str(folder), torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"text encoder folder {folder} cannot be loaded: {err}") from err
    return encoder.requires_grad_(False).eval().to(device)


def apply_text_encoder(ldm: LDM, path: str | Path, subfolder: str | None = None) -> LDM:
    """A new LDM with the text encoder of ``path`` (checked against the UNet and tokenizer)."""
    encoder = load_text_encoder(path, subfolder, device=ldm.device, dtype=ldm.text_encoder.dtype)
    folder = Path(path) / subfolder if subfolder else Path(path)
    width = ldm.unet.config.cross_attention_dim
    if encoder.config.hidden_size != width:
        raise CheckpointError(
            f"text encoder {folder} has hidden size {encoder.config.hidden_size} but the UNet's "
            f"cross-attention expects {width}"
        )
    if encoder.config.vocab_size != ldm.text_encoder.config.vocab_size:
        raise CheckpointError(
            f"text encoder {folder} has a vocabulary of {encoder.config.vocab_size} tokens, the base model's "
            f"{ldm.text_encoder.config.vocab_size}"
        )
    return dataclasses.replace(ldm, text_encoder=encoder, source=f"{ldm.source}+text_encoder:{folder}", _hash=None)


def load_erased(
    ldm: LDM,
    unet: str | Path | None = None,
    text_encoder: str | Path | None = None,
    subfolder: str | None = None,
) -> LDM:
    """The base ``ldm`` with a published UNet checkpoint and/or a replacement text encoder applied."""
    if unet is None and text_encoder is None:
        raise ValueError("load_erased needs a UNet checkpoint, a text encoder folder, or both")
    out = ldm
    if unet is not None:
        out = apply_unet_checkpoint(out, unet)
    if text_encoder is not None:
        out = apply_text_encoder(out, text_encoder, subfolder)
    return out


def save_unet_weights(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write parameter name -> tensor as ``.safetensors`` (the partial-edit format UCE publishes)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ValueError(f"save_unet_weights writes .safetensors files, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))
    return path
