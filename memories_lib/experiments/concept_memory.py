"""The data-set-level experiment of the paper (section 4.1): invert image sets with a model, through the store.

For every image of a set, ``invert_set`` records the seed z_T found by inversion, the image
regenerated from it, the PSNR of that regeneration against the image, the PSNR of the
VAE alone (the ceiling of any inversion), the NLL of the seed and whether the seed diverged
(non-finite or exploded, ``inversion.diverged_seeds``; its PSNR and NLL may then be NaN or
infinite). Each image's record is kept in the results store under a key made of everything
that determines it: the model's weights hash, device type and dtype, the image's hash, its
caption, and the method's *resolved* configuration (``inversion.resolve``: every default
filled in), so a changed library default computes new records instead of serving stale
ones, a rerun serves finished records from disk and an interrupted run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core import metrics
from ..inversion import api as inversion
from ..core.models import LDM, decode_latents, encode_images
from ..core.images import ImageSet
from ..core.store import Store, hash_tensor

#: Bump when the record's definition changes (a new field, another PSNR convention).
#: 2: keyed by the resolved configuration and the model's device and dtype; ``diverged``.
RECORD_VERSION = 2


@dataclass(frozen=True)
class SetInversion:
    """Per-image results of inverting an :class:`ImageSet` with one model and one method."""

    seeds: torch.Tensor            # (N, C, h, w)
    reconstructions: torch.Tensor  # (N, 3, H, W) in [0, 1]
    psnr: np.ndarray               # (N,) regeneration vs original, dB
    vae_psnr: np.ndarray           # (N,) VAE encode-decode vs original, dB
    nll: np.ndarray                # (N,) NLL of each seed under N(0, I)
    diverged: np.ndarray           # (N,) bool: the seed is non-finite or exploded

    def __len__(self) -> int:
        return self.seeds.shape[0]


def invert_set(
    ldm: LDM,
    images: ImageSet,
    store: Store,
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    desc: str | None = None,
) -> SetInversion:
    """Invert every image of ``images`` with ``ldm`` (batched, through ``store``).

    Records are keyed by :func:`record_key`; ``options`` are the method's (``inversion.invert``).
    """
    options = dict(options or {})
    config = inversion.resolve(method, num_steps, **options)  # unknown methods and options fail here
    model_hash = ldm.weights_hash()
    device, dtype = ldm.device.type, str(ldm.dtype)
    items = list(range(len(images)))

    def key(i: int) -> dict[str, Any]:
        return record_key(model_hash, device, dtype, hash_tensor(images.images[i]), images.prompts[i], config)

    def compute(batch: list[int]):
        x = images.images[batch]
        result = inversion.invert(
            ldm, x, [images.prompts[i] for i in batch], method=method, num_steps=num_steps,
            batch_size=batch_size, progress=False, **options,
        )
        vae_only = decode_latents(ldm, encode_images(ldm, x))
        psnr = _psnr_or_nan(result.reconstruction, x)
        vae_psnr = metrics.psnr(vae_only, x)
        nll = metrics.nll(result.seeds)
        return [
            (
                {"seed": result.seeds[j], "reconstruction": result.reconstruction[j]},
                {"psnr": float(psnr[j]), "vae_psnr": float(vae_psnr[j]), "nll": float(nll[j]),
                 "diverged": bool(result.diverged[j])},
            )
            for j in range(len(batch))
        ]

    entries = store.map_items(
        items, key, compute, batch_size=batch_size, desc=desc or f"{method}: {images.name}"
    )
    return SetInversion(
        seeds=torch.stack([e.tensors["seed"] for e in entries]),
        reconstructions=torch.stack([e.tensors["reconstruction"] for e in entries]),
        psnr=np.array([e.meta["psnr"] for e in entries], dtype=float),
        vae_psnr=np.array([e.meta["vae_psnr"] for e in entries], dtype=float),
        nll=np.array([e.meta["nll"] for e in entries], dtype=float),
        diverged=np.array([e.meta["diverged"] for e in entries], dtype=bool),
    )


def _psnr_or_nan(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """PSNR per image; NaN for a reconstruction that is not finite (its seed diverged)."""
    out = torch.full((images.shape[0],), float("nan"), dtype=torch.float64)
    finite = torch.isfinite(reconstruction).flatten(1).all(dim=1)
    if finite.any():
        out[finite] = metrics.psnr(reconstruction[finite], images[finite])
    return out


def record_key(
    model_hash: str, device: str, dtype: str, image_hash: str, prompt: str, config: Mapping[str, Any]
) -> dict[str, Any]:
    """The key parts of one image's inversion record; ``config`` is ``inversion.resolve``'s."""
    return {
        "kind": "inversion-record",
        "version": RECORD_VERSION,
        "model": model_hash,
        "device": device,
        "dtype": dtype,
        "image": image_hash,
        "prompt": prompt,
        "config": dict(config),
    }


def summarise(
    erased: SetInversion,
    reference: SetInversion,
    latent_dim: int,
    generator: torch.Generator,
    n_reference: int = 1000,
    n_boot: int = 1000,
) -> dict[str, float]:
    """PSNR means and both relative distances (exact EMD and the official Gaussian W2), with 95% bootstrap CIs.

    Images whose seed diverged are left out of every statistic and counted in ``diverged``
    and ``ref_diverged``.
    """
    e_ok, r_ok = ~erased.diverged, ~reference.diverged
    if not e_ok.any() or not r_ok.any():
        raise ValueError("every seed of a set diverged: nothing to summarise")
    row: dict[str, float] = {
        "psnr": float(np.mean(erased.psnr[e_ok])),
        "psnr_std": float(np.std(erased.psnr[e_ok])),
        "vae_psnr": float(np.mean(erased.vae_psnr[e_ok])),
        "ref_psnr": float(np.mean(reference.psnr[r_ok])),
        "nll": float(np.mean(erased.nll[e_ok])),
        "ref_nll": float(np.mean(reference.nll[r_ok])),
        "diverged": int((~e_ok).sum()),
        "ref_diverged": int((~r_ok).sum()),
    }
    for distance in metrics.DISTANCES:
        rd = metrics.relative_distance_ci(
            erased.nll[e_ok], reference.nll[r_ok], latent_dim, n_reference, generator, n_boot=n_boot, distance=distance
        )
        row[f"rd_{distance}"] = rd.value
        row[f"rd_{distance}_low"] = rd.low
        row[f"rd_{distance}_high"] = rd.high
    return row


def stack_sets(sets: Sequence[ImageSet], name: str) -> ImageSet:
    """One image set made of several."""
    return ImageSet(
        name=name,
        images=torch.cat([s.images for s in sets]),
        prompts=tuple(p for s in sets for p in s.prompts),
    )
