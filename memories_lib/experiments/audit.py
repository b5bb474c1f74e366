"""The paper's analysis of any text-to-image model of the Stable Diffusion layout against two image folders.

``memories audit`` (the CLI) calls :func:`run_audit`: a model (a diffusers folder or hub id, with an
erased UNet checkpoint or text encoder applied, as ``erasure.checkpoints`` loads the published
ones) inverts every image of a folder showing the concept (E) and of a reference folder (R); for
each image the record of chapter 4 (``concept_memory.invert_set``: seed, regeneration, PSNR, VAE
PSNR, NLL, divergence) is kept in the results store, so an interrupted audit resumes and a rerun
is read from disk. The summary is chapter 4's (``concept_memory.summarise``): mean PSNRs and NLLs,
the relative distance with the exact 1-D EMD and with the official code's Gaussian W2, each with
a 95% bootstrap interval, the official ratio against 50 N(0, I) samples (the one on the paper's
scale) with its spread, and whether R is distinguishable from N(0, I) at its size at all. With a
profile's judges (``judges``), the detector's share and the similarity of the regenerations.

A folder's images are every image file under it (sorted by relative path); their captions, the
prompts they are inverted with, come from a ``metadata.csv`` of columns ``file_name,text`` in
the folder (the Hugging Face ImageFolder layout) or from a CSV given for the concept images; a
folder without captions is inverted with the empty prompt, and the report says so. Images of
another size are centre-cropped and resized to the model's.

Everything is checked before the model is loaded: the folders, the captions, every image
(decoded once), the checkpoint files, the judges' profile and concept.

Under ``accelerate launch --num_processes K``, every process runs the loop over the images, and
the store shares its batches (``core.distributed``): each process inverts its own share first,
then the batches the others have not reached, and reads the rest once stored; the main process
scores the regenerations and writes the report. With at least one batch per process, the batches are
the ones a single process would run, so the numbers are the same; fewer images are cut into one batch
per process, and the numbers may then differ in the last bits (batched arithmetic).

Outputs in ``out``: ``results.json`` (every number: settings, model, summary, per image),
``images.csv`` (per image), ``distributions.png`` (PSNR and NLL of E and R, and N(0, I)),
``triplets.png`` (image, seed, regeneration), ``report.md`` and ``report.html`` (one page).
"""

from __future__ import annotations

import csv
import html
import json
import math
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core import distributed, metrics, throughput
from ..core.captions import (
    CAPTION_COLUMNS,
    CAPTIONS_FILE,
    IMAGE_SUFFIXES,
    CaptionsError,
    image_files,
    match_captions,
    read_captions,
)
from ..core.images import ImageSet, load_image, load_images, seeded_choice
from ..core.models import LDM, ModelLoadError, load_ldm
from ..core.progress import tqdm
from ..core.store import Store
from ..erasure.checkpoints import CheckpointError, load_erased, read_state_dict
from ..inversion import api as inversion
from .concept_memory import SetInversion, invert_set, regeneration_scores, stack_sets, summarise, valid_mask

#: Bump when the report's JSON changes meaning.
AUDIT_VERSION = 1

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class AuditError(ValueError):
    """Input an audit cannot use (a folder, a captions file, an image, a checkpoint, a setting), named."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ImageFolder:
    """The image files of a folder (sorted by relative path) and their captions ("" when uncaptioned)."""

    folder: Path
    files: tuple[Path, ...]
    captions: tuple[str, ...]
    captions_file: Path | None

    def __len__(self) -> int:
        return len(self.files)

    def names(self) -> list[str]:
        return [p.relative_to(self.folder).as_posix() for p in self.files]

    def subset(self, indices: Sequence[int]) -> "ImageFolder":
        return ImageFolder(self.folder, tuple(self.files[i] for i in indices),
                           tuple(self.captions[i] for i in indices), self.captions_file)


def read_folder(folder: str | Path, what: str, captions: str | Path | None = None) -> ImageFolder:
    """The images of ``folder`` with their captions (from ``captions``, else the folder's metadata.csv, else none).

    With a captions file, every image needs a row and every row an image. Images are not read here
    (:func:`check_images` decodes them).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AuditError(f"the {what} folder {folder} does not exist (or is not a folder)")
    names = image_files(folder)
    if not names:
        raise AuditError(f"the {what} folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    files = tuple(folder / name for name in names)
    captions_file = Path(captions).expanduser() if captions else folder / CAPTIONS_FILE
    if not captions_file.is_file():
        if captions:
            raise AuditError(f"captions file {captions_file} does not exist")
        return ImageFolder(folder, files, ("",) * len(files), None)
    try:
        table = read_captions(captions_file, require_text=False)
        match_captions(folder, names, table, captions_file)
    except CaptionsError as err:
        raise AuditError(str(err)) from None
    return ImageFolder(folder, files, tuple(table[n] for n in names), captions_file)


def check_images(images: ImageFolder, progress: bool = True) -> None:
    """Decode every image once, so that a corrupt or unsupported file fails before any model is loaded."""
    for path in tqdm(images.files, desc=f"checking {images.folder.name}", unit="image", leave=False,
                     disable=not progress):
        load_image(path)


def image_set(images: ImageFolder, name: str, size: int, progress: bool = True) -> ImageSet:
    """The folder's images at ``size`` x ``size`` (centre crop, bicubic), with their captions."""
    return ImageSet(name=name, images=load_images(images.files, size, resize=True, desc=name, progress=progress),
                    prompts=images.captions, info={"folder": str(images.folder)})


def check_checkpoints(unet_checkpoint: str | Path | None, text_encoder: str | Path | None) -> None:
    """The erased weights exist and are readable (the UNet file is read, weights only), before the model loads."""
    if unet_checkpoint is not None:
        try:
            read_state_dict(Path(unet_checkpoint).expanduser())
        except CheckpointError as err:
            raise AuditError(str(err)) from None
    if text_encoder is not None:
        folder = Path(text_encoder).expanduser()
        if not (folder / "config.json").is_file():
            raise AuditError(f"text encoder folder {folder} has no config.json (give a transformers CLIPTextModel "
                             "folder, e.g. AdvUnlearn's <concept>_unlearned)")


def load_model(model: str, unet_checkpoint: str | Path | None = None, text_encoder: str | Path | None = None,
               device: str = "cpu", dtype: str = "float32") -> LDM:
    """The base model with the erased UNet weights and/or text encoder applied (errors as AuditError)."""
    try:
        ldm = load_ldm(model, device=device, dtype=DTYPES[dtype])
        if unet_checkpoint is None and text_encoder is None:
            return ldm
        return load_erased(ldm, unet=Path(unet_checkpoint).expanduser() if unet_checkpoint else None,
                           text_encoder=Path(text_encoder).expanduser() if text_encoder else None)
    except (ModelLoadError, CheckpointError) as err:
        raise AuditError(str(err)) from None


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AuditSettings:
    """How the audit inverts and summarises (the defaults are chapter 4's, at the paper's 50 DDIM steps)."""

    inversion: str = "renoise"
    num_steps: int = 50
    seed: int = 0                 # the draw of --max-images, the bootstrap and the N(0, I) reference
    max_images: int | None = None  # at most this many images of each folder (chosen by seed)
    n_boot: int = 1000
    num_reference: int = 200_000  # N(0, I) NLLs of the reference sample
    official_draws: int = 1000
    batch_size: int | None = None  # images per UNet call (None: the throughput rule)
    device: str = "auto"          # auto: the launcher's device for this process, else cuda when present, else cpu
    dtype: str = "auto"           # auto: float16 on a GPU for an inversion measured safe in it, else float32
    triplets: int = 6

    def __post_init__(self) -> None:
        def whole(name: str, least: int, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise AuditError(f"{name} must be a whole number >= {least}, got {value!r}")

        whole("num_steps", 1)
        whole("seed", 0)
        whole("max_images", 2, optional=True)
        whole("n_boot", 20)
        whole("num_reference", 1000)
        whole("official_draws", 10)
        whole("batch_size", 1, optional=True)
        whole("triplets", 0)
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise AuditError(f"dtype must be auto or one of {list(DTYPES)}, got {self.dtype!r}")
        try:
            inversion.resolve(self.inversion, self.num_steps)
        except (KeyError, ValueError) as err:
            raise AuditError(str(err).strip("'\"")) from None


def resolve_dtype(settings: AuditSettings, device: str) -> str:
    """The dtype the audit runs in: ``settings.dtype``, or for ``auto`` float16 on a GPU when the inversion
    is measured to give float32's results in it (``InversionMethod.half_precision``), else float32."""
    if settings.dtype != "auto":
        return settings.dtype
    half = device.startswith("cuda") and inversion.get_method(settings.inversion).half_precision
    return "float16" if half else "float32"


@dataclass(frozen=True)
class Judges:
    """A world's detector and similarity model, and the concept they look for (``--judges PROFILE --concept C``)."""

    profile: str
    concept: str
    detector: Any = field(repr=False)
    similarity: Any = field(repr=False)
    text: str = ""


def open_judges(profile: str, concept: str) -> Judges:
    """The judges of ``profile``'s world for ``concept`` (a ProfileError or AuditError names what is wrong)."""
    from ..worlds import open_world

    world = open_world(profile)
    try:
        world.check_concepts([concept])
    except ValueError as err:
        raise AuditError(str(err)) from None
    return Judges(world.profile.name, concept, world.detector(), world.similarity(), world.concept_text(concept))


# --------------------------------------------------------------------------- the audit


@dataclass
class AuditResult:
    """What :func:`run_audit` computed (the main process's; other processes of a job get None)."""

    concept: SetInversion
    reference: SetInversion
    concept_images: ImageFolder
    reference_images: ImageFolder
    summary: dict[str, Any]
    judged: dict[str, float] | None
    settings: AuditSettings
    config: dict[str, Any]
    model: dict[str, Any]
    seconds: float
    processes: int
    out: Path | None = None


def _choose(images: ImageFolder, n: int | None, seed: int) -> ImageFolder:
    if n is None or len(images) <= n:
        return images
    return images.subset(seeded_choice(len(images), n, torch.Generator().manual_seed(seed)))


def run_audit(
    model: str,
    concept_images: str | Path,
    reference_images: str | Path,
    store: Store,
    *,
    unet_checkpoint: str | Path | None = None,
    text_encoder: str | Path | None = None,
    captions: str | Path | None = None,
    settings: AuditSettings = AuditSettings(),
    judges: tuple[str, str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> AuditResult | None:
    """Audit ``model`` on two image folders (see the module's docstring); write the report to ``out`` if given.

    ``judges`` is ``(profile, concept)``: that world's detector and similarity model score the
    regenerations. Returns None in the processes of a multi-process job other than the main one.
    """
    start = time.perf_counter()
    job = distributed.launch()
    e_folder = _choose(read_folder(concept_images, "concept images", captions), settings.max_images, settings.seed)
    r_folder = _choose(read_folder(reference_images, "reference images"), settings.max_images, settings.seed)
    for folder in (e_folder, r_folder):
        check_images(folder, progress=progress and job.is_main)
    check_checkpoints(unet_checkpoint, text_encoder)
    # Only the main process scores the regenerations: the others would load the judges' models for nothing.
    judged_by = open_judges(*judges) if judges is not None and job.is_main else None
    device = settings.device
    if device == "auto":
        device = distributed.auto_device()

    ldm = load_model(model, unet_checkpoint, text_encoder, device=device, dtype=resolve_dtype(settings, device))
    size = ldm.image_size
    shown = progress and job.is_main
    sets = {"E": image_set(e_folder, "E", size, shown), "R": image_set(r_folder, "R", size, shown)}
    joined = stack_sets(list(sets.values()), "E+R")
    config = inversion.resolve(settings.inversion, settings.num_steps)
    batch_size = settings.batch_size or throughput.unet_batch_size(ldm, len(joined),
                                                                   inversion.unet_rows_per_image(config))
    kwargs = dict(method=settings.inversion, num_steps=settings.num_steps, batch_size=batch_size)
    # Under a launcher every process runs this loop and the store shares its batches (core.distributed);
    # each ends it with every record, and the main one writes the report.
    inv = invert_set(ldm, joined, store, desc="inverting E and R", progress=progress and job.is_main, **kwargs)
    if not job.is_main:
        return None
    e_inv, r_inv = inv.part(0, len(sets["E"])), inv.part(len(sets["E"]), len(joined))

    d = ldm.latent_dim
    nll_ref = metrics.NLLReference.draw(d, settings.num_reference, torch.Generator().manual_seed(settings.seed))
    summary = summarise(e_inv, r_inv, nll_ref, torch.Generator().manual_seed(settings.seed), n_boot=settings.n_boot,
                        official_draws=settings.official_draws)
    summary["nll_gaussian"] = metrics.nll_gaussian(d).mean
    judged = None
    if judged_by is not None:
        judged = regeneration_scores(e_inv, judged_by.detector, judged_by.similarity, judged_by.concept,
                                     judged_by.text, originals=sets["E"].images)
    described = {
        "model": model,
        "unet_checkpoint": str(unet_checkpoint) if unet_checkpoint else None,
        "text_encoder": str(text_encoder) if text_encoder else None,
        "weights_hash": ldm.weights_hash(),
        "device": str(ldm.device),
        "dtype": str(ldm.dtype).removeprefix("torch."),
        "image_size": size,
        "latent_dim": d,
    }
    result = AuditResult(e_inv, r_inv, e_folder, r_folder, summary, judged, settings, dict(config), described,
                         time.perf_counter() - start, job.count)
    if judged_by is not None:
        result.model["judges"] = {"profile": judged_by.profile, "concept": judged_by.concept, "text": judged_by.text}
    if out is not None:
        result.out = write_report(result, Path(out), sets["E"].images)
    return result


# --------------------------------------------------------------------------- the report


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def per_image(inv: SetInversion, folder: ImageFolder) -> list[dict[str, Any]]:
    """One record per image: its file (relative to the folder), caption, PSNR, VAE PSNR, NLL, divergence."""
    if len(inv.nll) != len(folder):
        raise ValueError(f"{len(inv.nll)} inversions for the {len(folder)} images of {folder.folder}")
    return [{"file": name, "caption": caption, "psnr": float(inv.psnr[i]), "vae_psnr": float(inv.vae_psnr[i]),
             "nll": float(inv.nll[i]), "diverged": bool(inv.diverged[i])}
            for i, (name, caption) in enumerate(zip(folder.names(), folder.captions, strict=True))]


def to_json(result: AuditResult) -> dict[str, Any]:
    """Every number of the audit, JSON-safe."""
    return _plain({
        "version": AUDIT_VERSION,
        "model": result.model,
        "inputs": {
            "concept_images": {"folder": result.concept_images.folder, "captions": result.concept_images.captions_file,
                               "count": len(result.concept_images)},
            "reference_images": {"folder": result.reference_images.folder,
                                 "captions": result.reference_images.captions_file,
                                 "count": len(result.reference_images)},
        },
        "settings": asdict(result.settings),
        "inversion": result.config,
        "summary": result.summary,
        "judged": result.judged,
        "images": {"concept": per_image(result.concept, result.concept_images),
                   "reference": per_image(result.reference, result.reference_images)},
        "processes": result.processes,
        "seconds": result.seconds,
    })


def _figures(result: AuditResult, out: Path, originals: torch.Tensor) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.plots import book_style

    book_style()
    files = {}
    e_ok, r_ok = valid_mask(result.concept), valid_mask(result.reference)
    gaussian = metrics.nll_gaussian(result.model["latent_dim"])
    sets = ((result.concept, e_ok, "concept images (E)"), (result.reference, r_ok, "reference (R)"))
    psnrs = np.concatenate([inv.psnr[ok] for inv, ok, _ in sets])
    nlls = np.concatenate([inv.nll[ok] for inv, ok, _ in sets])
    # One set of bins per panel, shared by E and R (and spanning N(0, I)'s NLLs), so the bars compare.
    psnr_bins = np.linspace(psnrs.min(), psnrs.max() + 1e-6, 25) if psnrs.size else 10
    lo, hi = gaussian.mean - 4 * gaussian.std, gaussian.mean + 4 * gaussian.std
    nll_bins = np.linspace(min(lo, nlls.min(initial=lo)), max(hi, nlls.max(initial=hi)), 60)
    fig, (ax_psnr, ax_nll) = plt.subplots(1, 2, figsize=(8, 3))
    for inv, ok, label in sets:
        ax_psnr.hist(inv.psnr[ok], bins=psnr_bins, alpha=0.6, label=label)
        ax_nll.hist(inv.nll[ok], bins=nll_bins, alpha=0.6, density=True, label=label)
    vae = float(np.mean(result.concept.vae_psnr[e_ok])) if e_ok.any() else float("nan")
    if math.isfinite(vae):
        ax_psnr.axvline(vae, color="k", ls="--", lw=1, label="VAE round trip (E)")
    grid = np.linspace(nll_bins[0], nll_bins[-1], 400)
    ax_nll.plot(grid, np.exp(-0.5 * ((grid - gaussian.mean) / gaussian.std) ** 2) / (gaussian.std * math.sqrt(2 * math.pi)),
                color="k", lw=1, label="N(0, I) seeds")
    ax_psnr.set(xlabel="PSNR of the regeneration (dB)", ylabel="images", title="Is the image regenerated?")
    ax_nll.set(xlabel="NLL of the seed under N(0, I)", ylabel="density", title="Is its seed a likely one?")
    ax_psnr.legend(loc="upper left")
    ax_nll.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "distributions.png")
    plt.close(fig)
    files["distributions"] = "distributions.png"

    k = min(result.settings.triplets, len(result.concept))
    if k:
        seeds = result.concept.seeds[:k].float()
        shown = seeds[:, :3] if seeds.shape[1] >= 3 else seeds[:, :1].expand(-1, 3, -1, -1)
        lo = shown.flatten(1).amin(1)[:, None, None, None]
        hi = shown.flatten(1).amax(1)[:, None, None, None]
        shown = (shown - lo) / (hi - lo).clamp_min(1e-8)
        fig, axes = plt.subplots(k, 3, figsize=(3 * 1.6, k * 1.6 + 0.3), squeeze=False)
        names = result.concept_images.names()
        for i in range(k):
            panels = (originals[i], shown[i], result.concept.reconstructions[i].float().clamp(0, 1))
            for j, image in enumerate(panels):
                ax = axes[i, j]
                ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.spines[:].set_visible(False)
            axes[i, 0].set_ylabel(names[i][-18:], fontsize=7)
            axes[i, 2].set_xlabel(f"{result.concept.psnr[i]:.1f} dB", fontsize=7)
        for j, title in enumerate(("image", "its seed z_T (3 channels)", "regenerated from it")):
            axes[0, j].set_title(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "triplets.png")
        plt.close(fig)
        files["triplets"] = "triplets.png"
    return files


def _num(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _interval(row: Mapping[str, Any], name: str, digits: int = 2) -> str:
    return f"{_num(row.get(name), digits)} [{_num(row.get(f'{name}_low'), digits)}, {_num(row.get(f'{name}_high'), digits)}]"


def report_markdown(result: AuditResult, figures: Mapping[str, str]) -> str:
    """The one-page report (Markdown)."""
    s, m = result.summary, result.model
    erased = m["unet_checkpoint"] or m["text_encoder"]
    uncaptioned = [f"the {what}" for what, folder in (("concept images", result.concept_images),
                                                       ("reference images", result.reference_images))
                   if folder.captions_file is None]
    lines = [
        "# Audit: are the erased concept's images still in the model?",
        "",
        f"- model: `{m['model']}`" + (f" with `{erased}`" if erased else " (as it is)"),
        f"- weights hash `{m['weights_hash']}`, {m['device']}, {m['dtype']}, {m['image_size']}x{m['image_size']} "
        f"images, seeds of d = {m['latent_dim']}",
        f"- concept images (E): {len(result.concept_images)} from `{result.concept_images.folder}`",
        f"- reference images (R): {len(result.reference_images)} from `{result.reference_images.folder}`",
        f"- inversion: `{result.settings.inversion}`, {result.settings.num_steps} steps; "
        f"{result.processes} process(es), {result.seconds:.0f} s",
    ]
    if uncaptioned:
        lines.append(f"- {' and '.join(uncaptioned)} have no captions: inverted with the empty prompt")
    lines += [
        "",
        "## Is each image regenerated from the seed inversion finds?",
        "",
        "| | E (concept) | R (reference) |",
        "|---|---|---|",
        f"| mean PSNR of the regeneration (dB) | {_num(s['psnr'])} ± {_num(s['psnr_std'])} | {_num(s['ref_psnr'])} |",
        f"| VAE round trip PSNR (dB), the encoder's own error | {_num(s['vae_psnr'])} | |",
        f"| mean NLL of the seeds | {_num(s['nll'], 1)} | {_num(s['ref_nll'], 1)} |",
        f"| images left out (diverged seeds) | {s['diverged_e']} | {s['diverged_r']} |",
        "",
        f"A seed drawn from N(0, I) has a mean NLL of {_num(s['nll_gaussian'], 1)}.",
        "",
        "## Are the concept's seeds as likely as the reference's?",
        "",
        "The relative distance is the distance of E's seed NLLs from those of N(0, I) seeds, divided by R's: at",
        "1 or below, the concept's seeds are as likely under N(0, I) as the seeds of images the model was never",
        "asked to forget (or likelier); well above 1, they are less likely, and the concept is harder to reach.",
        "",
        "| relative distance | value [95% interval] |",
        "|---|---|",
        f"| exact, 1-D EMD (bootstrap over E and R) | {_interval(s, 'rd_emd')} |",
        f"| official code's Gaussian W2 (same bootstrap) | {_interval(s, 'rd_w2')} |",
        f"| official ratio against 50 N(0, I) samples, as the paper computes it (median [5%, 95%] of "
        f"{result.settings.official_draws} draws) | {_interval(s, 'rd_w2_50')} |",
        "",
    ]
    if s.get("unstable"):
        lines += [f"**Caution:** R's seeds are indistinguishable from N(0, I) seeds at this size (EMD(R, N) = "
                  f"{_num(s['emd_rn_sigma'])} NLL standard deviations, below the noise floor "
                  f"{_num(s['noise_floor_r'])}): the ratio's denominator is noise, and the ratio can take any value.",
                  ""]
    if result.judged is not None:
        j = result.judged
        judges = m["judges"]
        lines += [
            "## Do the regenerations show the concept?",
            "",
            f"Judged by the detector and similarity model of the profile `{judges['profile']}`, concept "
            f"`{judges['concept']}`:",
            "",
            f"- the detector sees the concept in {_num(100 * j['detected'], 0)}% of the regenerations of E",
            f"- similarity to \"{judges['text']}\": {_num(j['similarity'], 3)} (the images themselves: "
            f"{_num(j['similarity_original'], 3)})",
            "",
        ]
    lines += ["## Figures", ""]
    if "distributions" in figures:
        lines += [f"![PSNR and NLL of E and R]({figures['distributions']})", ""]
    if "triplets" in figures:
        lines += [f"![The first images of E, their seeds and regenerations]({figures['triplets']})", ""]
    lines += ["Every number, per image too, is in `results.json` and `images.csv`.", ""]
    return "\n".join(lines)


def report_html(markdown: str) -> str:
    """The Markdown report as one HTML page (markdown-it, which the book's toolchain installs)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
             "img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape('Audit')}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def write_report(result: AuditResult, out: Path, originals: torch.Tensor) -> Path:
    """``results.json``, ``images.csv``, the figures and ``report.md``/``report.html`` in ``out``; returns out."""
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(result)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    with open(out / "images.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "file", "caption", "psnr", "vae_psnr", "nll", "diverged"])
        for name, records in data["images"].items():
            for r in records:
                writer.writerow([name, r["file"], r["caption"], r["psnr"], r["vae_psnr"], r["nll"], r["diverged"]])
    figures = _figures(result, out, originals)
    markdown = report_markdown(result, figures)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.html").write_text(report_html(markdown), encoding="utf-8")
    return out


# --------------------------------------------------------------------------- a worked example from a world


@dataclass(frozen=True)
class Example:
    """Files an audit reads, written from a world: its base model, one erased model's weights, two image folders."""

    base: Path
    unet_checkpoint: Path | None
    text_encoder: Path | None
    concept_images: Path
    reference_images: Path

    def command(self, out: str = "audit") -> str:
        """The ``memories audit`` command line that audits this example."""
        erased = (f" --unet-checkpoint {self.unet_checkpoint}" if self.unet_checkpoint else "") + \
                 (f" --text-encoder {self.text_encoder}" if self.text_encoder else "")
        return (f"memories audit --model {self.base}{erased} --concept-images {self.concept_images} "
                f"--reference-images {self.reference_images} --out {out}")


def _write_folder(images: ImageSet, folder: Path) -> Path:
    from ..core.images import save_image

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CAPTIONS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CAPTION_COLUMNS)
        for i, (image, caption) in enumerate(zip(images.images, images.prompts)):
            name = f"{i:04d}.png"
            save_image(image, folder / name)
            writer.writerow([name, caption])
    return folder


def export_example(world: Any, name: str, concept: str, out: str | Path, n: int = 50, seed: int = 0,
                   store: Store | None = None, progress: bool = True) -> Example:
    """Write what ``memories audit`` reads, from ``world``: ``base/`` (the base model, diffusers layout), the
    erased model ``name`` for ``concept`` as the weights it changed (``<name>-<concept>.safetensors`` for the
    UNet, ``<name>-<concept>-text_encoder/`` for a text encoder), ``concept/`` (the world's erased set of
    ``n`` images, as chapter 4 draws it) and ``reference/`` (its reference set without the concept), each
    with a ``metadata.csv`` of captions. An existing folder ``out`` must be empty."""
    import shutil

    from ..erasure.checkpoints import save_unet_weights
    from .models import check_models, load_model as load_world_model

    world.check_concepts([concept])
    try:
        check_models(world, [name], [concept], vanilla=False)
    except ValueError as err:
        raise AuditError(str(err)) from None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AuditError(f"{out} is not empty; give a new folder for the example")
    out.mkdir(parents=True, exist_ok=True)
    base_path = Path(world.base_model_path(progress=progress))
    if not base_path.is_dir():
        raise AuditError(f"the world's base model {base_path} is not a local folder; audit it by its id instead")
    base = world.base_model(progress=progress)
    erased = load_world_model(world, name, concept)
    shutil.copytree(base_path, out / "base", ignore=shutil.ignore_patterns(".*"))
    unet_file = text_encoder = None
    reference = base.unet.state_dict()
    changed = {k: v for k, v in erased.unet.state_dict().items() if not torch.equal(v, reference[k])}
    if changed:
        unet_file = save_unet_weights(out / f"{name}-{concept}.safetensors", changed)
    if any(not torch.equal(v, base.text_encoder.state_dict()[k]) for k, v in erased.text_encoder.state_dict().items()):
        text_encoder = out / f"{name}-{concept}-text_encoder"
        erased.text_encoder.save_pretrained(text_encoder)
    concept_set = world.erased_set(concept, n, seed, store=store, progress=progress)
    reference_set = world.reference_set(n, seed, exclude=[concept])
    return Example(out / "base", unet_file, text_encoder, _write_folder(concept_set, out / "concept"),
                   _write_folder(reference_set, out / "reference"))
