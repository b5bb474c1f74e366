"""The Sequential Inversion Block (paper section 4.2): many distinct seeds of one image of an erased concept.

For a query image q (from a concept's erased set) and N support images s (unrelated images of
the world's reference set), as the official code runs it (``src/many_memories_of_an_ablated_image.py``
and ``src/vae_inversion_tools.py`` of the paper's repository):

1. decoder inversion (:func:`memories_lib.inversion.decoder.decoder_invert`; Adam, lr 1e-2, 3000
   steps, MSE of D(z)/2 + 0.5 against the image, unscaled latents) of each support from its
   encoder mean: z0(s);
2. decoder inversion towards the query, starting from z0(s): z0(s->q), N latents that all decode to
   (nearly) q but start from N different places;
3. decoder inversion of the query from its own encoder mean: z0(q);
4. diffusion inversion (the inversion registry; default the official ReNoise run) of every z0(s->q)
   with the query's caption: the N *memories* z_T(s->q); of z0(q) with the same caption: the
   query's own seed z_T(q); and, as the official control group, of every z0(s) with the support's
   own caption: z_T(s).

How a decoder latent is handed to the diffusion inversion (``handoff``), both as in the official code:

* ``"reencode"`` (the official ReNoise path): decode z0, quantise to 8 bits (the official code
  goes through a PIL image), and invert that image as any image is inverted: the encoder's
  posterior *sample* (seeded generator, :func:`memories_lib.inversion.invert`), so the z_0 actually
  inverted is not z0 but a re-encoding of it;
* ``"latent"`` (the official null-text path): invert ``z0 * scaling_factor`` itself
  (:func:`memories_lib.inversion.invert_latents`).

Re-encoding adds quantisation and posterior noise to every memory, so distances between memories
could partly be re-encoding noise; :func:`reencoding_shift` measures how far a query's own seed
moves under the re-encoding alone (the same z0, method, caption and random draws, with and
without it).

Caching. Decoder inversions depend only on the VAE, which an erased model shares with its base
model: they are stored under a key of the VAE's weights hash (:meth:`LDM.vae_hash`), device, dtype,
the target image's hash, the start (the encoder mean, or the key of the decoder inversion it starts
from), the steps and the learning rate, so a second model reuses them. Diffusion inversions are
stored per model (its weights hash, device, dtype), like chapter 4's records, keyed by the decoder
latent's hash, the caption, the handoff and the method's resolved configuration. Both go through
:meth:`Store.map_items`, so an interrupted run resumes with the finished batches.

Departures from the official code:

* supports are drawn with a seeded ``torch.Generator`` from the world's reference set; the official
  code takes COCO images by index in ``os.listdir`` order (query k gets indices 10k .. 10k+9), which
  depends on the file system and is not reproducible. As there, the queries' supports are disjoint;
* the official code decodes each latent alone; here a batch of latents is optimised at once (the
  loss is the sum of per-image MSEs, so each latent follows its own run; see
  :mod:`memories_lib.inversion.decoder`), and the diffusion inversions of all queries share batches;
* the official code reloads the model for every query; here nothing is reloaded and every result
  is cached;
* the decoder-inversion PSNR is measured on the clamped decoding in float, not on the saved 8-bit PNG;
* the official null-text path runs as many Adam steps per timestep as diffusion steps
  (``num_opt_steps=num_diffusion_inversion_steps``, 50 at its defaults); here they are the
  method's own option (``nti-memories``: 50), independent of ``num_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core import metrics, throughput
from ..core.images import ImageSet
from ..core.models import LDM
from ..core.store import Entry, Store, hash_tensor
from ..inversion import api as inversion
from ..inversion import decoder as decoder_inversion
from ..inversion.common import InversionResult
from ..worlds.base import World

#: Bump when the meaning of a stored SIB record changes.
SIB_VERSION = 1

#: How a decoder latent reaches the diffusion inversion (see the module docstring).
HANDOFFS = ("reencode", "latent")
#: The official code's handoff for its two diffusion inversions; any other method defaults to "latent".
OFFICIAL_HANDOFF = {"renoise": "reencode", "nti-memories": "latent"}

#: The official SIB's numbers of queries per concept and supports per query.
NUM_QUERIES = 5
NUM_SUPPORTS = 10


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class SIBInputs:
    """The queries of one concept and the supports of each (``supports[k]`` belongs to ``queries`` image k)."""

    concept: str
    queries: ImageSet
    supports: tuple[ImageSet, ...]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def draw_supports(reference: ImageSet, num_queries: int, num_supports: int, generator: torch.Generator
                  ) -> tuple[ImageSet, ...]:
    """``num_queries`` disjoint sets of ``num_supports`` images of ``reference``, drawn with ``generator``.

    One permutation of the reference set (``torch.randperm``) is cut into consecutive blocks; each
    block is kept in the permutation's order. A ValueError, before anything is drawn, when the
    reference set is too small.
    """
    num_queries = _positive_int(num_queries, "num_queries")
    num_supports = _positive_int(num_supports, "num_supports")
    if num_supports > len(reference):
        raise ValueError(f"num_supports ({num_supports}) is larger than the reference set "
                         f"({len(reference)} images)")
    if num_queries * num_supports > len(reference):
        raise ValueError(f"{num_queries} queries x {num_supports} disjoint supports need {num_queries * num_supports} "
                         f"reference images; the reference set has {len(reference)}")
    order = torch.randperm(len(reference), generator=generator).tolist()
    sets = []
    for k in range(num_queries):
        pick = order[k * num_supports:(k + 1) * num_supports]
        sets.append(ImageSet(f"S{k}", reference.images[pick], [reference.prompts[i] for i in pick],
                             info={"reference_indices": pick}))
    return tuple(sets)


def sib_inputs(
    world: World,
    concept: str,
    num_queries: int = NUM_QUERIES,
    num_supports: int = NUM_SUPPORTS,
    seed: int = 0,
    *,
    set_size: int | None = None,
    reference_size: int | None = None,
    exclude: Sequence[str] | None = None,
    store: Store | None = None,
    progress: bool = True,
    **erased_set_options: Any,
) -> SIBInputs:
    """The queries of ``concept`` and their supports in ``world``, every choice seeded.

    Queries: the first ``num_queries`` images of ``world.erased_set(concept, set_size, seed)`` (the
    official code takes the first 5 of a concept's set; ``set_size`` None: ``num_queries``; pass
    chapter 4's set size to take the first images of that set). Supports: :func:`draw_supports` from
    ``world.reference_set(reference_size, seed, exclude)`` (default size: exactly enough,
    ``num_queries * num_supports``; default ``exclude``: the profile's concepts and ``concept``, as
    chapter 4's reference set) with ``torch.Generator().manual_seed(seed)``. Unknown concepts and
    impossible sizes raise before any image is generated.
    """
    concept = world.check_concepts([concept])[0]
    num_queries = _positive_int(num_queries, "num_queries")
    num_supports = _positive_int(num_supports, "num_supports")
    set_size = num_queries if set_size is None else _positive_int(set_size, "set_size")
    if set_size < num_queries:
        raise ValueError(f"set_size ({set_size}) must be at least num_queries ({num_queries})")
    reference_size = (num_queries * num_supports if reference_size is None
                      else _positive_int(reference_size, "reference_size"))
    if exclude is None:
        exclude = sorted(set(world.concepts) | {concept})
    exclude = world.check_concepts(exclude)
    if num_supports > reference_size:
        raise ValueError(f"num_supports ({num_supports}) is larger than the reference set ({reference_size} images)")
    reference = world.reference_set(reference_size, seed, exclude=exclude)
    supports = draw_supports(reference, num_queries, num_supports, torch.Generator().manual_seed(seed))
    erased = world.erased_set(concept, set_size, seed, store=store, progress=progress, **erased_set_options)
    if len(erased) < num_queries:
        raise ValueError(f"the erased set of {concept!r} has {len(erased)} images, fewer than num_queries ({num_queries})")
    queries = ImageSet(f"Q:{concept}", erased.images[:num_queries], list(erased.prompts[:num_queries]),
                       info={**dict(erased.info), "set_size": set_size})
    return SIBInputs(concept=concept, queries=queries, supports=supports)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SIBSettings:
    """The checked settings of a SIB run: the method's resolved configuration and the handoff."""

    method: str
    num_steps: int | None
    options: Mapping[str, Any]
    config: Mapping[str, Any]
    handoff: str
    decoder_steps: int
    decoder_lr: float


def check_settings(
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    handoff: str | None = None,
    decoder_steps: int = decoder_inversion.DEFAULT_STEPS,
    decoder_lr: float = decoder_inversion.DEFAULT_LR,
) -> SIBSettings:
    """The settings of :func:`many_memories`, checked (a ValueError names the bad one) before any work.

    ``handoff`` None: the official one for ``method`` (:data:`OFFICIAL_HANDOFF`), else "latent".
    """
    decoder_inversion.check_settings(decoder_steps, decoder_lr)
    options = dict(options or {})
    config = inversion.resolve(method, num_steps, **options)  # unknown methods and options fail here
    handoff = OFFICIAL_HANDOFF.get(method, "latent") if handoff is None else handoff
    if handoff not in HANDOFFS:
        raise ValueError(f"unknown handoff {handoff!r}; choose one of {list(HANDOFFS)}")
    return SIBSettings(method=method, num_steps=num_steps, options=options, config=config, handoff=handoff,
                       decoder_steps=int(decoder_steps), decoder_lr=float(decoder_lr))


# --------------------------------------------------------------------------- decoder inversions


@dataclass(frozen=True)
class SIBLatents:
    """The decoder inversions of one query and its N supports: unscaled VAE latents, float32 on the CPU.

    query: z0(q) (C, h, w); supports: z0(s) (N, C, h, w); support_to_query: z0(s->q) (N, C, h, w).
    The ``*_psnr`` are of the clamped decoding against the target (dB); the ``*_losses`` the MSE
    after k = 0 .. steps updates (:class:`~memories_lib.inversion.decoder.DecoderInversion`).
    """

    query: torch.Tensor
    supports: torch.Tensor
    support_to_query: torch.Tensor
    query_psnr: float
    support_psnr: np.ndarray
    support_to_query_psnr: np.ndarray
    query_losses: torch.Tensor
    support_losses: torch.Tensor
    support_to_query_losses: torch.Tensor


def decoder_key(ldm: LDM, target_hash: str, start: Mapping[str, Any], num_steps: int, lr: float) -> dict[str, Any]:
    """The key parts of one decoder inversion: everything it depends on, and nothing of the UNet."""
    return {
        "kind": "decoder-inversion",
        "version": SIB_VERSION,
        "vae": ldm.vae_hash(),
        "device": ldm.vae.device.type,
        "dtype": str(ldm.vae.dtype),
        "target": target_hash,
        "start": dict(start),
        "num_steps": int(num_steps),
        "lr": float(lr),
        "loss": "adam; mse(D(z)/2+0.5 unclamped, x in [0,1]) per image; unscaled z",
    }


#: The start of a decoder inversion from the target's encoder mean (the key part ``start``).
ENCODER_MEAN = {"from": "encoder-mean"}


def _decoder_stage(
    ldm: LDM,
    targets: torch.Tensor,
    starts: list[tuple[dict[str, Any], torch.Tensor | None]],
    store: Store,
    num_steps: int,
    lr: float,
    batch_size: int | None,
    progress: bool,
    desc: str,
) -> list[Entry]:
    """Decoder inversions of ``targets[i]`` from ``starts[i]`` = (key part, latent or None for the encoder mean)."""
    hashes = [hash_tensor(t) for t in targets]
    items = list(range(targets.shape[0]))
    if batch_size is None:
        batch_size = decoder_inversion.decoder_batch_size(ldm.vae, len(items), tuple(ldm.latent_shape))

    def key(i: int) -> dict[str, Any]:
        return decoder_key(ldm, hashes[i], starts[i][0], num_steps, lr)

    def compute(batch: list[int]):
        x = targets[batch]
        given = [starts[i][1] for i in batch]
        start = None  # every target from its encoder mean (decoder_invert's default)
        if any(g is not None for g in given):
            start = torch.stack([decoder_inversion.encoder_mean(ldm.vae, targets[i:i + 1])[0] if g is None else g
                                 for i, g in zip(batch, given)])
        out = decoder_inversion.decoder_invert(ldm.vae, x, start, num_steps, lr, progress=progress)
        with throughput.threads_for_batch(len(batch), ldm.vae.device):
            psnr = metrics.psnr(decoder_inversion.decode_unscaled(ldm.vae, out.latents), x.float().clamp(0, 1))
        return [({"latent": out.latents[j], "losses": out.losses[j]}, {"psnr": float(psnr[j]), "mse": float(out.mse[j])})
                for j in range(len(batch))]

    return store.map_items(items, key, compute, batch_size=batch_size, desc=desc)


def decoder_latents(
    ldm: LDM,
    queries: ImageSet,
    supports: Sequence[ImageSet],
    store: Store,
    num_steps: int = decoder_inversion.DEFAULT_STEPS,
    lr: float = decoder_inversion.DEFAULT_LR,
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> list[SIBLatents]:
    """The decoder inversions of every query and its supports (steps 1-3 of the module docstring), through ``store``.

    Two stages, each one batch over all queries where memory allows: z0(s) of every support and
    z0(q) of every query from their encoder means; then z0(s->q) from each z0(s) towards its query.
    Keyed by :func:`decoder_key` (the VAE alone), so every model with this VAE is served the same latents.
    """
    decoder_inversion.check_settings(num_steps, lr)
    _check_pairs(ldm, queries, supports)
    n_q = len(queries)
    sizes = [len(s) for s in supports]
    support_images = torch.cat([s.images for s in supports])
    first_targets = torch.cat([support_images, queries.images])
    first = _decoder_stage(ldm, first_targets, [(ENCODER_MEAN, None)] * first_targets.shape[0], store, num_steps, lr,
                           batch_size, progress, "decoder inversion: supports and queries")
    support_entries, query_entries = first[:support_images.shape[0]], first[support_images.shape[0]:]
    owner = [k for k in range(n_q) for _ in range(sizes[k])]
    second_targets = queries.images[owner]
    second_starts = [({"from": "decoder-inversion", "key": e.key}, e.tensors["latent"]) for e in support_entries]
    second = _decoder_stage(ldm, second_targets, second_starts, store, num_steps, lr, batch_size, progress,
                            "decoder inversion: supports towards queries")
    out, offset = [], 0
    for k in range(n_q):
        s_entries = support_entries[offset:offset + sizes[k]]
        sq_entries = second[offset:offset + sizes[k]]
        offset += sizes[k]
        q = query_entries[k]
        out.append(SIBLatents(
            query=q.tensors["latent"],
            supports=torch.stack([e.tensors["latent"] for e in s_entries]),
            support_to_query=torch.stack([e.tensors["latent"] for e in sq_entries]),
            query_psnr=float(q.meta["psnr"]),
            support_psnr=np.array([e.meta["psnr"] for e in s_entries], dtype=float),
            support_to_query_psnr=np.array([e.meta["psnr"] for e in sq_entries], dtype=float),
            query_losses=q.tensors["losses"],
            support_losses=torch.stack([e.tensors["losses"] for e in s_entries]),
            support_to_query_losses=torch.stack([e.tensors["losses"] for e in sq_entries]),
        ))
    return out


def _check_pairs(ldm: LDM, queries: ImageSet, supports: Sequence[ImageSet]) -> None:
    if len(queries) < 1:
        raise ValueError("the SIB needs at least one query image")
    if len(supports) != len(queries):
        raise ValueError(f"got {len(supports)} support sets for {len(queries)} queries (one set per query)")
    size = ldm.image_size
    for s in (queries, *supports):
        if len(s) < 1:
            raise ValueError(f"image set {s.name!r} is empty: every query needs at least one support")
        if tuple(s.images.shape[2:]) != (size, size):
            raise ValueError(f"image set {s.name!r} has {tuple(s.images.shape[2:])} images; this model takes "
                             f"{size}x{size}")


# --------------------------------------------------------------------------- diffusion inversions


def _handoff_key(ldm: LDM, z0_hash: str, prompt: str, handoff: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": "sib-inversion",
        "version": SIB_VERSION,
        "model": ldm.weights_hash(),
        "device": ldm.device.type,
        "dtype": str(ldm.dtype),
        "z0": z0_hash,
        "prompt": prompt,
        "handoff": handoff,
        "config": dict(config),
    }


def reencode_input(ldm: LDM, z0: torch.Tensor) -> torch.Tensor:
    """The image the ``"reencode"`` handoff inverts: decoder latents (unscaled) decoded and quantised to 8 bits."""
    with throughput.threads_for_batch(z0.shape[0], ldm.vae.device):
        return decoder_inversion.quantize_8bit(decoder_inversion.decode_unscaled(ldm.vae, z0))


def invert_decoder_latents(
    ldm: LDM,
    z0: torch.Tensor,
    prompts: Sequence[str],
    store: Store,
    settings: SIBSettings,
    *,
    handoff: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "SIB diffusion inversion",
) -> InversionResult:
    """Diffusion inversion of unscaled decoder latents ``z0`` (M, C, h, w) with ``prompts``, one record each in ``store``.

    ``handoff`` (default ``settings.handoff``): "reencode" inverts :func:`reencode_input` with
    :func:`inversion.invert`; "latent" inverts ``z0 * scaling_factor`` with :func:`inversion.invert_latents`.
    Returns the common result type: ``latents`` are the z_0 actually inverted (scaled), ``info["handoff"]``.
    """
    handoff = settings.handoff if handoff is None else handoff
    if handoff not in HANDOFFS:
        raise ValueError(f"unknown handoff {handoff!r}; choose one of {list(HANDOFFS)}")
    prompts = list(prompts)
    if len(prompts) != z0.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {z0.shape[0]} latents")
    config = settings.config
    hashes = [hash_tensor(z) for z in z0]
    items = list(range(z0.shape[0]))
    if batch_size is None:
        batch_size = throughput.unet_batch_size(ldm, len(items), inversion.unet_rows_per_image(config))

    def key(i: int) -> dict[str, Any]:
        return _handoff_key(ldm, hashes[i], prompts[i], handoff, config)

    def compute(batch: list[int]):
        batch_prompts = [prompts[i] for i in batch]
        common = dict(method=settings.method, num_steps=settings.num_steps, batch_size=batch_size, progress=progress,
                      **settings.options)
        if handoff == "reencode":
            result = inversion.invert(ldm, reencode_input(ldm, z0[batch]), batch_prompts, **common)
        else:
            scaled = z0[batch] * ldm.vae.config.scaling_factor
            result = inversion.invert_latents(ldm, scaled, batch_prompts, **common)
        return [({"seed": result.seeds[j], "latent": result.latents[j], "reconstruction": result.reconstruction[j],
                  "reconstruction_latent": result.reconstruction_latents[j]},
                 {"diverged": bool(result.diverged[j])}) for j in range(len(batch))]

    entries = store.map_items(items, key, compute, batch_size=batch_size, desc=desc)
    return _as_result(entries, settings, handoff)


def _as_result(entries: Sequence[Entry], settings: SIBSettings, handoff: str) -> InversionResult:
    def stack(name: str) -> torch.Tensor:
        return torch.stack([e.tensors[name] for e in entries])

    return InversionResult(
        seeds=stack("seed"), latents=stack("latent"), reconstruction=stack("reconstruction"),
        method=settings.method, info={"handoff": handoff}, reconstruction_latents=stack("reconstruction_latent"),
        diverged=torch.tensor([bool(e.meta["diverged"]) for e in entries], dtype=torch.bool),
        # As inversion.invert_latents reports it: given latents are not encoded.
        config={**settings.config, **({"posterior": "given"} if handoff == "latent" else {})},
    )


def _part(result: InversionResult, start: int, end: int) -> InversionResult:
    return InversionResult(
        seeds=result.seeds[start:end], latents=result.latents[start:end],
        reconstruction=result.reconstruction[start:end], method=result.method, info=dict(result.info),
        reconstruction_latents=result.reconstruction_latents[start:end], diverged=result.diverged[start:end],
        config=dict(result.config),
    )


# --------------------------------------------------------------------------- the block


def _psnr_or_nan(images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    out = np.full(images.shape[0], np.nan)
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    if finite.any():
        out[finite.numpy()] = metrics.psnr(images[finite].clamp(0, 1), targets[finite].clamp(0, 1)).numpy()
    return out


@dataclass(frozen=True)
class QueryMemories:
    """The Sequential Inversion Block's results for one query q and its N supports, with one model.

    memories: the N seeds z_T(s->q) (the common result type; ``reconstruction`` their regenerations);
    own: the query's own seed z_T(q) (one); controls: the supports' own seeds z_T(s), each inverted
    with its own caption (None when not asked for). ``psnr``: each memory's regeneration against q;
    ``own_psnr``: of z_T(q)'s; ``control_psnr``: of each control's regeneration against its support;
    ``latents``: the decoder inversions (their PSNRs are the decoder-only reference).
    """

    query: torch.Tensor
    caption: str
    supports: ImageSet
    latents: SIBLatents
    memories: InversionResult
    own: InversionResult
    controls: InversionResult | None
    psnr: np.ndarray
    own_psnr: float
    control_psnr: np.ndarray | None
    handoff: str

    @property
    def nll(self) -> np.ndarray:
        """(N,) NLL of each memory under N(0, I)."""
        return metrics.nll(self.memories.seeds).numpy()

    @property
    def own_nll(self) -> float:
        return float(metrics.nll(self.own.seeds)[0])

    @property
    def control_nll(self) -> np.ndarray | None:
        return None if self.controls is None else metrics.nll(self.controls.seeds).numpy()

    @property
    def measurable(self) -> bool:
        """Whether this query has a geometry: its own seed finite, and two memories (and controls) that did not diverge."""
        return (not bool(self.own.diverged.any()) and int((~self.memories.diverged).sum()) >= 2
                and (self.controls is None or int((~self.controls.diverged).sum()) >= 2))

    def sphere(self) -> tuple[np.ndarray, np.ndarray]:
        """Each memory's place around the own seed a: (distance to a relative to N(0, I) seeds', mean angle).

        The first is |z_i - a| divided by the expected distance of a N(0, I) seed from a
        (:func:`metrics.gaussian_geometry` with a's norm); the second is the mean angle in degrees,
        seen from a, between z_i - a and the other memories' z_j - a. Diverged memories are left out.
        """
        return sphere_coordinates(self.memories.seeds[~self.memories.diverged], self.own.seeds[0])

    def geometry(self, controls: bool = False) -> metrics.SeedGeometry:
        """:func:`metrics.seed_geometry` of the memories (or of the controls) around the query's own seed.

        Seeds flagged ``diverged`` are left out (at least 2 must remain).
        """
        result = self.controls if controls else self.memories
        if result is None:
            raise ValueError("this run has no controls (many_memories(..., controls=True) computes them)")
        keep = ~result.diverged
        return metrics.seed_geometry(result.seeds[keep], self.own.seeds[0])


def sphere_coordinates(seeds: torch.Tensor, own_seed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Where ``seeds`` (n >= 2, ...) lie around ``own_seed`` a: (|z_i - a| / E|z - a| for z ~ N(0, I), mean angle).

    The mean angle of z_i is the mean over j != i of the angle in degrees between z_i - a and
    z_j - a. Seeds on a thin sphere around a share the first number and spread in the second.
    """
    v = torch.as_tensor(seeds).flatten(1).double() - torch.as_tensor(own_seed).flatten().double()
    n = v.shape[0]
    if n < 2:
        raise ValueError(f"sphere_coordinates needs at least 2 seeds, got {n}")
    r = v.norm(dim=1)
    cos = (v @ v.T) / (r[:, None] * r[None, :])
    angle = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    mean_angle = (angle.sum(dim=1) - angle.diagonal()) / (n - 1)
    a_sq = float(torch.as_tensor(own_seed).double().square().sum())
    expected = metrics.gaussian_geometry(v.shape[1], anchor_sq=a_sq).to_anchor_mean
    return (r / expected).numpy(), mean_angle.numpy()


def many_memories(
    ldm: LDM,
    queries: ImageSet,
    supports: Sequence[ImageSet],
    store: Store,
    *,
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    handoff: str | None = None,
    decoder_steps: int = decoder_inversion.DEFAULT_STEPS,
    decoder_lr: float = decoder_inversion.DEFAULT_LR,
    controls: bool = True,
    batch_size: int | None = None,
    decoder_batch_size: int | None = None,
    progress: bool = True,
) -> list[QueryMemories]:
    """The Sequential Inversion Block of every query of ``queries`` with its supports ``supports[k]``, with ``ldm``.

    ``method``, ``num_steps``, ``options``: the diffusion inversion (the registry's; default the
    official ReNoise run, as chapter 4); ``handoff``: "reencode" or "latent" (None: the official one
    for the method, :func:`check_settings`); ``decoder_steps``, ``decoder_lr``: the decoder
    inversions (official: 3000, 1e-2); ``controls``: also invert every support's z0(s) with its own
    caption. ``batch_size``: UNet batch (None: the throughput rule over all queries' inversions);
    ``decoder_batch_size``: latents per decoder-inversion batch (None: all that fit the memory budget).
    Every setting and input is checked before any work; results go through ``store`` (see the module
    docstring), so a second model with the same VAE reuses the decoder inversions.
    """
    settings = check_settings(method, num_steps, options, handoff, decoder_steps, decoder_lr)
    _check_pairs(ldm, queries, supports)
    latents = decoder_latents(ldm, queries, supports, store, settings.decoder_steps, settings.decoder_lr,
                              batch_size=decoder_batch_size, progress=progress)

    # One diffusion-inversion run over all queries: memories, own seeds, controls.
    z0, prompts, spans = [], [], []
    for k, lat in enumerate(latents):
        n = lat.supports.shape[0]
        parts = [("memories", lat.support_to_query, [queries.prompts[k]] * n),
                 ("own", lat.query[None], [queries.prompts[k]])]
        if controls:
            parts.append(("controls", lat.supports, list(supports[k].prompts)))
        for name, z, p in parts:
            start = sum(t.shape[0] for t in z0)
            z0.append(z)
            prompts.extend(p)
            spans.append((k, name, start, start + z.shape[0]))
    result = invert_decoder_latents(ldm, torch.cat(z0), prompts, store, settings, batch_size=batch_size,
                                    progress=progress, desc=f"SIB {settings.method} inversion ({settings.handoff})")
    parts_of: dict[int, dict[str, InversionResult]] = {k: {} for k in range(len(queries))}
    for k, name, start, end in spans:
        parts_of[k][name] = _part(result, start, end)

    out = []
    for k, lat in enumerate(latents):
        q = queries.images[k]
        mem, own = parts_of[k]["memories"], parts_of[k]["own"]
        ctrl = parts_of[k].get("controls")
        out.append(QueryMemories(
            query=q, caption=queries.prompts[k], supports=supports[k], latents=lat, memories=mem, own=own,
            controls=ctrl,
            psnr=_psnr_or_nan(mem.reconstruction, q.expand_as(mem.reconstruction)),
            own_psnr=float(_psnr_or_nan(own.reconstruction, q[None])[0]),
            control_psnr=None if ctrl is None else _psnr_or_nan(ctrl.reconstruction, supports[k].images),
            handoff=settings.handoff,
        ))
    return out


def summarise(result: QueryMemories) -> dict[str, Any]:
    """One query's row: PSNRs, NLLs and the geometry of its memories (and controls) against the N(0, I) baseline.

    ``psnr`` / ``decoder_psnr``: means over the memories' regenerations and over the decodings of
    z0(s->q), against q; ``nll``, ``own_nll``, ``control_nll``: NLLs under N(0, I) (means);
    ``to_seed_mean``, ``to_seed_std`` (ddof 0), ``to_seed_cv``: Euclidean distances of the memories
    to the query's own seed; ``pairwise_mean``, ``pairwise_cosine_mean``: between memories;
    ``baseline_cv``: the CV of N(0, I) seeds' distances to a seed of the own seed's norm at this d
    (:func:`metrics.gaussian_geometry`), and ``cv_ratio`` = ``to_seed_cv / baseline_cv``, the number
    to read the CV by; ``baseline_cosine`` (1); ``diverged``: memories left out of the geometry. With
    controls, ``control_*`` the same for the supports' own seeds.
    """
    geo = result.geometry()
    own = result.own.seeds[0].double()
    base = metrics.gaussian_geometry(geo.d, anchor_sq=float(own.square().sum()))
    row: dict[str, Any] = {
        "n": len(result.memories), "diverged": int(result.memories.diverged.sum()),
        "psnr": float(np.nanmean(result.psnr)), "decoder_psnr": float(np.mean(result.latents.support_to_query_psnr)),
        "own_psnr": result.own_psnr, "nll": float(np.mean(result.nll)), "own_nll": result.own_nll,
        "to_seed_mean": geo.to_seed_mean, "to_seed_std": geo.to_seed_std, "to_seed_cv": geo.to_seed_cv,
        "to_seed_cosine_mean": geo.to_seed_cosine_mean,
        "pairwise_mean": geo.pairwise_mean, "pairwise_std": geo.pairwise_std,
        "pairwise_cosine_mean": geo.pairwise_cosine_mean, "pairwise_cosine_std": geo.pairwise_cosine_std,
        "baseline_to_seed_mean": base.to_anchor_mean, "baseline_cv": base.to_anchor_cv,
        "cv_ratio": geo.to_seed_cv / base.to_anchor_cv, "baseline_pairwise_mean": base.pairwise_mean,
        "baseline_cosine": base.cosine_mean, "d": geo.d,
    }
    if result.controls is not None:
        ctrl = result.geometry(controls=True)
        row.update({
            "control_psnr": float(np.nanmean(result.control_psnr)), "control_nll": float(np.mean(result.control_nll)),
            "control_to_seed_mean": ctrl.to_seed_mean, "control_to_seed_cv": ctrl.to_seed_cv,
            "control_pairwise_mean": ctrl.pairwise_mean, "control_pairwise_cosine_mean": ctrl.pairwise_cosine_mean,
        })
    return row


# --------------------------------------------------------------------------- the re-encoding control


@dataclass(frozen=True)
class ReencodingShift:
    """How far seeds move under the ``"reencode"`` handoff alone (:func:`reencoding_shift`).

    seed_distance: (M,) |z_T(reencoded) - z_T(latent)|; latent_distance: (M,) |z_0 re-encoded - z_0|
    (scaled latents); reencoded, direct: the two inversions (common result type).
    """

    seed_distance: np.ndarray
    latent_distance: np.ndarray
    reencoded: InversionResult
    direct: InversionResult


def reencoding_shift(
    ldm: LDM,
    z0: torch.Tensor,
    prompts: Sequence[str],
    store: Store,
    *,
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> ReencodingShift:
    """The seeds of decoder latents ``z0`` (unscaled) inverted with and without re-encoding, and their distances.

    Both inversions use the same method, configuration, caption and random draws
    (:func:`inversion.invert_latents` skips the posterior draw that :func:`inversion.invert` makes), so
    the distance is what decoding, 8-bit quantisation and the posterior sample alone do to a seed.
    Applied to the queries' z0(q) (``[m.latents.query for m in results]``), it is the scale to read the
    memories' distances against under the ReNoise path. Both go through the store (per model).
    """
    settings = check_settings(method, num_steps, options, None)
    prompts = list(prompts)
    reencoded = invert_decoder_latents(ldm, z0, prompts, store, settings, handoff="reencode", batch_size=batch_size,
                                       progress=progress, desc="re-encoding control: re-encoded")
    direct = invert_decoder_latents(ldm, z0, prompts, store, settings, handoff="latent", batch_size=batch_size,
                                    progress=progress, desc="re-encoding control: direct")
    seed_distance = (reencoded.seeds.double() - direct.seeds.double()).flatten(1).norm(dim=1).numpy()
    latent_distance = (reencoded.latents.double() - direct.latents.double()).flatten(1).norm(dim=1).numpy()
    return ReencodingShift(seed_distance=seed_distance, latent_distance=latent_distance, reencoded=reencoded,
                           direct=direct)


__all__ = [
    "ENCODER_MEAN", "HANDOFFS", "NUM_QUERIES", "NUM_SUPPORTS", "OFFICIAL_HANDOFF", "QueryMemories",
    "ReencodingShift", "SIBInputs", "SIBLatents", "SIBSettings", "SIB_VERSION", "check_settings", "decoder_key",
    "decoder_latents", "draw_supports", "invert_decoder_latents", "many_memories", "reencode_input",
    "reencoding_shift", "sib_inputs", "sphere_coordinates", "summarise",
]
