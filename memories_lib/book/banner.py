"""The banner that opens every chapter: the profile, device, versions and seed it was executed with."""

from __future__ import annotations

import sys

from .. import __version__
from ..core import distributed
from ..core.profile import Profile
from .parameters import as_profile

# The banner's line for a profile whose numbers are not to be interpreted (``interpret: false``).
NOT_INTERPRETED = "- **numbers:** not to be interpreted; this profile only shows that the code runs"


def device_label(device: str) -> str:
    """``device`` in words: for CUDA the GPU's name, when one is visible."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if device.startswith("cuda"):
        return f"{device} (not available on this machine)"
    return device


def banner_markdown(profile: str | Profile, seed: int, device: str | None = None) -> str:
    """The MyST admonition that opens a chapter: profile, device, versions and seed.

    A profile with ``interpret: false`` adds a line saying its numbers are not to be interpreted;
    a chapter executed by the processes of a launched job (``core.distributed``), how many.
    """
    import torch

    prof = as_profile(profile)
    resolved = device or prof.resolve_device()
    job = distributed.launch()
    lines = [
        # no backticks in a fence's info string (CommonMark), hence no code span in the title
        f"```{{admonition}} Executed with the {prof.name} profile",
        ":class: note",
        "",
        f"{prof.description.strip()}",
        "",
        f"- **profile:** `{prof.name}` (world `{prof.world.kind}`, "
        f"{prof.num_inference_steps} inference steps)",
        f"- **device:** {device_label(resolved)}, dtype `{prof.model.dtype}`",
        f"- **seed:** {seed}",
        f"- **versions:** memories_lib {__version__}, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}",
        *([] if prof.interpret else [NOT_INTERPRETED]),
        *([f"- **processes:** {job.count} (accelerate launch), sharing the chapter's loops over images"]
          if job.count > 1 else []),
        "```",
    ]
    return "\n".join(lines)


def show_banner(profile: str | Profile, seed: int, device: str | None = None) -> None:
    """Display the chapter's banner (a Markdown output that myst-nb renders as an admonition)."""
    from IPython.display import Markdown, display

    display(Markdown(banner_markdown(profile, seed, device)))
