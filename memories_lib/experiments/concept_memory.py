"""The data-set-level experiment of the paper (section 4.1): invert image sets with a model, through the store.

For every image of a set, ``invert_set`` records the seed z_T found by inversion, the image
regenerated from it, the PSNR of that regeneration against the image, the PSNR of the
VAE round trip (encode, then decode: the error the encoder adds, a reference line and not a
bound, since optimising a latent against the decoder can do better), the NLL of the seed and
whether the seed diverged (non-finite or exploded, ``inversion.diverged_seeds``; its PSNR and
NLL may then be NaN or infinite). Each image's record is kept in the results store under a key
made of everything that determines it: the model's weights hash, device type and dtype, the
image's hash, its caption, and the method's *resolved* configuration (``inversion.resolve``:
every default filled in), so a changed library default computes new records instead of serving
stale ones, a rerun serves finished records from disk and an interrupted run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core import metrics, throughput
from ..inversion import api as inversion
from ..core.models import LDM, decode_latents, encode_images
from ..core.images import ImageSet
from ..core.judging import concept_head
from ..core.store import Store, hash_tensor
from ..worlds.base import World
from .erasure_tuning import PromptTest, prompt_test
from .models import VANILLA

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

    def part(self, start: int, end: int) -> "SetInversion":
        """The results of images ``start`` to ``end - 1``."""
        return SetInversion(**{f.name: getattr(self, f.name)[start:end] for f in fields(self)})


def invert_set(
    ldm: LDM,
    images: ImageSet,
    store: Store,
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
    progress: bool = True,
) -> SetInversion:
    """Invert every image of ``images`` with ``ldm`` (batched, through ``store``).

    Records are keyed by :func:`record_key`; ``options`` are the method's (``inversion.invert``).
    The images still missing from the store go ``batch_size`` at a time (None: as many as the
    throughput rule puts in one UNet call, :func:`memories_lib.core.throughput.unet_batch_size`).
    With ``progress``, the inversion's steps show (a batch of a few hundred images takes minutes).
    """
    options = dict(options or {})
    config = inversion.resolve(method, num_steps, **options)  # unknown methods and options fail here
    model_hash = ldm.weights_hash()
    device, dtype = ldm.device.type, str(ldm.dtype)
    items = list(range(len(images)))
    if batch_size is None:
        batch_size = throughput.unet_batch_size(ldm, len(items), inversion.unet_rows_per_image(config))

    def key(i: int) -> dict[str, Any]:
        return record_key(model_hash, device, dtype, hash_tensor(images.images[i]), images.prompts[i], config)

    def compute(batch: list[int]):
        x = images.images[batch]
        result = inversion.invert(
            ldm, x, [images.prompts[i] for i in batch], method=method, num_steps=num_steps,
            batch_size=batch_size, progress=progress, **options,
        )
        with throughput.threads_for_batch(len(batch), ldm.device):
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
        items, key, compute, batch_size=batch_size, desc=desc or f"{method}: {images.name}", progress=progress
    )
    return SetInversion(
        seeds=torch.stack([e.tensors["seed"] for e in entries]),
        reconstructions=torch.stack([e.tensors["reconstruction"] for e in entries]),
        psnr=np.array([e.meta["psnr"] for e in entries], dtype=float),
        vae_psnr=np.array([e.meta["vae_psnr"] for e in entries], dtype=float),
        nll=np.array([e.meta["nll"] for e in entries], dtype=float),
        diverged=np.array([e.meta["diverged"] for e in entries], dtype=bool),
    )


def invert_sets(
    ldm: LDM,
    sets: Mapping[str, ImageSet],
    store: Store,
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
    progress: bool = True,
) -> dict[str, SetInversion]:
    """:func:`invert_set` of several image sets with one model, fed to the UNet together.

    The sets are inverted as one set (each image keeps its own record, so the result of an image
    does not depend on the sets beside it), which lets a model's erased, reference and control
    sets share large batches instead of each ending in a small one.
    """
    names = list(sets)
    if not names:
        return {}
    joined = invert_set(ldm, stack_sets([sets[n] for n in names], "+".join(names)), store, method=method,
                        num_steps=num_steps, options=options, batch_size=batch_size, desc=desc,
                        progress=progress)
    out, start = {}, 0
    for name in names:
        end = start + len(sets[name])
        out[name] = joined.part(start, end)
        start = end
    return out


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


def cached_inversion(
    ldm: LDM,
    images: torch.Tensor,
    prompts: Sequence[str],
    store: Store,
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[inversion.InversionResult, float]:
    """One batch inversion (``inversion.invert``) through the store, and its wall time in seconds.

    For the chapters that compare methods on a few images: seeds, latents, reconstructions, the
    divergence flags and the tensors of ``info`` (EDICT's pair) are stored under a key of the model's
    weights, device and dtype, the images' and prompts' hashes and the *resolved* configuration; the
    seconds are the time measured when the result was computed (on the machine that computed it).
    """
    options = dict(options or {})
    config = inversion.resolve(method, num_steps, **options)  # unknown methods and options fail here
    prompts = list(prompts)
    parts = {
        "kind": "inversion-batch",
        "version": RECORD_VERSION,
        "model": ldm.weights_hash(),
        "device": ldm.device.type,
        "dtype": str(ldm.dtype),
        "images": hash_tensor(images),
        "prompts": prompts,
        "config": dict(config),
    }

    def compute():
        start = time.perf_counter()
        result = inversion.invert(ldm, images, prompts, method=method, num_steps=num_steps, progress=False,
                                  **options)
        seconds = time.perf_counter() - start
        tensors = {"seeds": result.seeds, "latents": result.latents, "reconstruction": result.reconstruction,
                   "diverged": torch.as_tensor(result.diverged, dtype=torch.uint8)}
        tensors.update({f"info.{k}": v for k, v in result.info.items() if isinstance(v, torch.Tensor)})
        return tensors, {"seconds": seconds}

    entry = store.get_or_compute(parts, compute)
    t = entry.tensors
    result = inversion.InversionResult(
        seeds=t["seeds"], latents=t["latents"], reconstruction=t["reconstruction"], method=method,
        info={k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("info.")},
        diverged=t["diverged"].bool(), config=dict(config))
    return result, float(entry.meta["seconds"])


def valid_mask(inv: SetInversion) -> np.ndarray:
    """Which images of ``inv`` count: finite NLL and PSNR, and not marked ``diverged``.

    A seed whose inversion diverged has a meaningless (often infinite) NLL and a garbage
    regeneration; one such image would dominate every mean and distance of its set.
    """
    ok = np.isfinite(np.asarray(inv.nll, dtype=np.float64)) & np.isfinite(np.asarray(inv.psnr, dtype=np.float64))
    return ok & ~np.asarray(inv.diverged, dtype=bool)


#: N(0, I) NLLs per draw in the official code (analyze_latents.py): its ratio is on this footing.
OFFICIAL_SAMPLES = 50
#: N(0, I) samples per draw of the comparison ratio ``rd_w2_1000`` (how much the official ratio moves with
#: a larger reference sample).
COMPARE_SAMPLES = 1000


def _nan_row(prefix: str, names: Sequence[str]) -> dict[str, float]:
    return {f"{prefix}{name}": float("nan") for name in names}


def summarise(
    erased: SetInversion,
    reference: SetInversion,
    nll_reference: metrics.NLLReference,
    generator: torch.Generator,
    n_boot: int = 1000,
    control: SetInversion | None = None,
    official_samples: int = OFFICIAL_SAMPLES,
    official_draws: int = 1000,
    compare_samples: int = COMPARE_SAMPLES,
    floor_quantile: float = 0.95,
) -> dict[str, Any]:
    """One (model, concept) row: PSNRs, NLLs, relative distances with intervals, and how far to trust them.

    Images with a non-finite NLL or PSNR, or marked ``diverged``, are left out of every number and
    counted (``diverged_e``, ``diverged_r``, ``diverged_c``, and their sum ``diverged``).

    Relative distances, all against the large fixed ``nll_reference`` (see
    :func:`metrics.relative_distance_interval` for why it is not resampled):

    * ``rd_emd`` [``_low``, ``_high``]: exact 1-D EMD, 95% bootstrap interval over E and R;
    * ``rd_w2`` [...]: the official code's Gaussian squared W2, same interval;
    * ``rd_w2_50`` [``_low``, ``_high``]: the official W2 ratio as the official code computes it, against
      ``official_samples`` (50) N(0, I) NLLs: median and 5-95% range over ``official_draws`` seeded
      draws (:func:`metrics.official_ratio_spread`); ``rd_w2_1000`` the same with ``compare_samples``.
      Only ``rd_w2_50`` is on the scale of the paper's numbers (2.49).
    * with ``control`` (the base model's own generations without the concept, inverted by the same
      model): ``rd_ctrl_emd`` [...] and ``rd_ctrl_w2``, the same ratios with R_control for R.

    Trust: ``emd_rn`` is EMD(R, N) and ``emd_rn_sigma`` the same in units of the NLL's std sqrt(d/2).
    ``noise_floor`` is the ``floor_quantile`` of that quantity for |R| genuine N(0, I) seeds
    (:meth:`metrics.NLLReference.noise_floor`); ``unstable`` is True when EMD(R, N) lies below it: R's
    seeds are then indistinguishable from N(0, I) seeds at that size, the ratio's denominator is
    sampling noise and the ratio can take any value. ``unstable_ctrl`` is the same for R_control.
    """
    row: dict[str, Any] = {}
    sets = {"e": erased, "r": reference, **({"c": control} if control is not None else {})}
    masks = {k: valid_mask(inv) for k, inv in sets.items()}
    for k, mask in masks.items():
        row[f"n_{k}"] = int(mask.sum())
        row[f"diverged_{k}"] = int((~mask).sum())
    row["diverged"] = sum(row[f"diverged_{k}"] for k in masks)
    nll = {k: np.asarray(sets[k].nll, dtype=np.float64)[m] for k, m in masks.items()}
    psnr = {k: np.asarray(sets[k].psnr, dtype=np.float64)[m] for k, m in masks.items()}

    def mean(x):
        return float(np.mean(x)) if x.size else float("nan")

    row.update({
        "psnr": mean(psnr["e"]),
        "psnr_std": float(np.std(psnr["e"])) if psnr["e"].size else float("nan"),
        "vae_psnr": mean(np.asarray(erased.vae_psnr, dtype=np.float64)[masks["e"]]),
        "ref_psnr": mean(psnr["r"]),
        "nll": mean(nll["e"]),
        "ref_nll": mean(nll["r"]),
    })
    sigma = nll_reference.nll_std
    rd_names = ["", "_low", "_high"]
    for prefix, other in (("rd", "r"), ("rd_ctrl", "c")):
        if other not in nll:
            continue
        for distance in metrics.DISTANCES:
            name = f"{prefix}_{distance}"
            if nll["e"].size and nll[other].size:
                rd = metrics.relative_distance_interval(nll["e"], nll[other], nll_reference, generator,
                                                        n_boot=n_boot, distance=distance)
                row.update({name: rd.value, f"{name}_low": rd.low, f"{name}_high": rd.high})
            else:
                row.update(_nan_row(name, rd_names))
        key = "emd_rn" if other == "r" else "emd_cn"
        flag = "unstable" if other == "r" else "unstable_ctrl"
        if nll[other].size:
            row[key] = nll_reference.emd(nll[other])
            row[f"{key}_sigma"] = row[key] / sigma
            floor = nll_reference.noise_floor(nll[other].size, generator, quantile=floor_quantile)
            row[f"noise_floor_{other}"] = floor
            row[flag] = bool(row[f"{key}_sigma"] < floor)
        else:
            row.update({key: float("nan"), f"{key}_sigma": float("nan"), f"noise_floor_{other}": float("nan"),
                        flag: True})
    row["emd_en"] = nll_reference.emd(nll["e"]) if nll["e"].size else float("nan")
    if "c" in nll:
        row["ctrl_psnr"] = mean(psnr["c"])
        row["ctrl_nll"] = mean(nll["c"])
    for n_samples, name in ((official_samples, "rd_w2_50"), (compare_samples, "rd_w2_1000")):
        if nll["e"].size and nll["r"].size:
            spread = metrics.official_ratio_spread(nll["e"], nll["r"], nll_reference.d, generator,
                                                   n_samples=n_samples, n_draws=official_draws)
            row.update({name: spread.median, f"{name}_low": spread.low, f"{name}_high": spread.high})
        else:
            row.update(_nan_row(name, rd_names))
    return row


def regeneration_scores(
    inv: SetInversion,
    detector: Any,
    similarity: Any,
    concept: str,
    text: str,
    originals: torch.Tensor | None = None,
) -> dict[str, float]:
    """How much of the concept the regenerations from the inverted seeds show, as the official code scores them.

    ``detected``: the share of regenerations in which ``detector`` (a world's Detector) sees ``concept``
    (on the head that has it as a label); ``similarity``: the mean image-text score of the
    regenerations against ``text`` (the concept's name) under ``similarity`` (a world's
    SimilarityModel); with ``originals`` (the inverted images, same order), ``similarity_original``:
    the same score of the images themselves, the scale to read it against. Images left out by
    :func:`valid_mask` are not scored; a set with none left gives NaN.
    """
    head = concept_head(detector, concept)
    mask = valid_mask(inv)
    out = {"detected": float("nan"), "similarity": float("nan"), "similarity_original": float("nan")}
    if not mask.any():
        return out
    index = torch.as_tensor(np.flatnonzero(mask))
    images = inv.reconstructions[index].float().clamp(0, 1)
    labels = detector.label_names[head]
    verdicts = detector.predict_proba(images)[head].argmax(-1).tolist()
    out["detected"] = float(np.mean([labels[v] == concept for v in verdicts]))
    out["similarity"] = float(similarity.similarity(images, [text])[:, 0].float().mean())
    if originals is not None:
        out["similarity_original"] = float(similarity.similarity(originals[index].float(), [text])[:, 0].float().mean())
    return out


@dataclass(frozen=True)
class MemoryRun:
    """What every (model, concept) row of the concept-memory experiment shares: the image sets, the
    inversion, the N(0, I) reference and the statistics' settings (chapter 4 and the three-views chapter)."""

    erased_sets: Mapping[str, ImageSet]   # concept -> its erased set E
    reference: ImageSet                   # R
    control: ImageSet                     # R_ctrl
    nll_reference: metrics.NLLReference
    test: PromptTest                      # chapter 3's prompt test, read from the store when it ran
    inversion: str = "renoise"
    num_steps: int | None = None
    seed: int = 0
    n_boot: int = 1000
    official_samples: int = OFFICIAL_SAMPLES
    official_draws: int = 1000


def memory_row(world: World, run: MemoryRun, name: str, ldm: LDM, concept: str, store: Store,
               progress: bool = True) -> tuple[dict[str, Any], tuple[SetInversion, SetInversion, SetInversion]]:
    """One row of the experiment: model ``name`` (``ldm``, erased for ``concept``) inverts E, R and R_ctrl
    together (:func:`invert_sets`, through ``store``), and the row holds :func:`summarise`, the
    :func:`regeneration_scores` and the prompt test (``prompt_accuracy``, ``others_accuracy``,
    ``others_base``, ``passes``: NaN for the unerased model). Returns the row and the three inversions."""
    erased = run.erased_sets[concept]
    inv = invert_sets(ldm, {"E": erased, "R": run.reference, "R_ctrl": run.control}, store,
                      method=run.inversion, num_steps=run.num_steps, desc=f"{name}/{concept}: E, R, R_ctrl",
                      progress=progress)
    row = summarise(inv["E"], inv["R"], run.nll_reference, torch.Generator().manual_seed(run.seed),
                    n_boot=run.n_boot, control=inv["R_ctrl"], official_samples=run.official_samples,
                    official_draws=run.official_draws)
    row.update(regeneration_scores(inv["E"], world.detector(), world.similarity(), concept,
                                   world.concept_text(concept), originals=erased.images))
    tested = prompt_test(world, ldm, concept, run.test, store)
    row.update(prompt_accuracy=tested.erased, others_accuracy=tested.others, others_base=tested.others_base,
               passes=tested.passes if name != VANILLA else np.nan)
    return row, (inv["E"], inv["R"], inv["R_ctrl"])


def stack_sets(sets: Sequence[ImageSet], name: str) -> ImageSet:
    """One image set made of several."""
    return ImageSet(
        name=name,
        images=torch.cat([s.images for s in sets]),
        prompts=tuple(p for s in sets for p in s.prompts),
    )
