"""The data-set-level experiment of the paper (section 4.1): invert image sets with a model, through the store.

For every image of a set, ``invert_set`` records the seed z_T found by inversion, the image
regenerated from it, the PSNR of that regeneration against the image, the PSNR of the
VAE round trip (encode, then decode: the error the encoder adds, a reference line and not a
bound, since optimising a latent against the decoder can do better) and the NLL of the seed. Each image's record is
kept in the results store under a key made of everything that determines it (the model's
weights hash, the image's hash, its caption, the method and its parameters), so a rerun
serves finished records from disk and an interrupted run resumes.
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
RECORD_VERSION = 1


@dataclass(frozen=True)
class SetInversion:
    """Per-image results of inverting an :class:`ImageSet` with one model and one method."""

    seeds: torch.Tensor            # (N, C, h, w)
    reconstructions: torch.Tensor  # (N, 3, H, W) in [0, 1]
    psnr: np.ndarray               # (N,) regeneration vs original, dB
    vae_psnr: np.ndarray           # (N,) VAE encode-decode vs original, dB
    nll: np.ndarray                # (N,) NLL of each seed under N(0, I)

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
    """Invert every image of ``images`` with ``ldm`` (batched, through ``store``)."""
    options = dict(options or {})
    inversion.get_method(method)  # an unknown method fails here, before any work
    model_hash = ldm.weights_hash()
    items = list(range(len(images)))

    def key(i: int) -> dict[str, Any]:
        return {
            "kind": "inversion-record",
            "version": RECORD_VERSION,
            "model": model_hash,
            "image": hash_tensor(images.images[i]),
            "prompt": images.prompts[i],
            "method": method,
            "num_steps": num_steps,
            "options": options,
        }

    def compute(batch: list[int]):
        x = images.images[batch]
        result = inversion.invert(
            ldm, x, [images.prompts[i] for i in batch], method=method, num_steps=num_steps,
            batch_size=batch_size, progress=False, **options,
        )
        vae_only = decode_latents(ldm, encode_images(ldm, x))
        psnr = metrics.psnr(result.reconstruction, x)
        vae_psnr = metrics.psnr(vae_only, x)
        nll = metrics.nll(result.seeds)
        return [
            (
                {"seed": result.seeds[j], "reconstruction": result.reconstruction[j]},
                {"psnr": float(psnr[j]), "vae_psnr": float(vae_psnr[j]), "nll": float(nll[j])},
            )
            for j in range(len(batch))
        ]

    entries = store.map_items(
        items, key, compute, batch_size=batch_size, desc=desc or f"{method}: {images.name}"
    )
    return SetInversion(
        seeds=torch.stack([e.tensors["seed"] for e in entries]),
        reconstructions=torch.stack([e.tensors["reconstruction"] for e in entries]),
        psnr=np.array([e.meta["psnr"] for e in entries]),
        vae_psnr=np.array([e.meta["vae_psnr"] for e in entries]),
        nll=np.array([e.meta["nll"] for e in entries]),
    )


def summarise(
    erased: SetInversion,
    reference: SetInversion,
    latent_dim: int,
    generator: torch.Generator,
    n_reference: int = 1000,
    n_boot: int = 1000,
) -> dict[str, float]:
    """PSNR means and both relative distances (exact EMD and the official Gaussian W2), with 95% bootstrap CIs."""
    row: dict[str, float] = {
        "psnr": float(np.mean(erased.psnr)),
        "psnr_std": float(np.std(erased.psnr)),
        "vae_psnr": float(np.mean(erased.vae_psnr)),
        "ref_psnr": float(np.mean(reference.psnr)),
        "nll": float(np.mean(erased.nll)),
        "ref_nll": float(np.mean(reference.nll)),
    }
    for distance in metrics.DISTANCES:
        rd = metrics.relative_distance_ci(
            erased.nll, reference.nll, latent_dim, n_reference, generator, n_boot=n_boot, distance=distance
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
