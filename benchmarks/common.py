"""What the GPU-aware benchmarks share: the models they time (built once into a folder and reused), their
command-line arguments for it, the device's name, and ``RESULTS.md``, where ``--record`` appends their runs."""

from __future__ import annotations

import argparse
import atexit
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from memories_lib.core.models import build_tiny_ldm, save_ldm

RESULTS = Path(__file__).with_name("RESULTS.md")


def build_sd14_random(path: Path) -> Path:
    """Random weights in Stable Diffusion 1.4's shapes (UNet, VAE, CLIP ViT-L/14 text encoder), saved at ``path``.

    The tokenizer is the project's word tokenizer padded to 77 tokens (no CLIP vocabulary offline);
    timings do not depend on the weights or the vocabulary.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from memories_lib.core.models import TINY_WORDS
    from memories_lib.core.tokenizer import SPECIAL_TOKENS, build_word_tokenizer

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", pad_token_id=SPECIAL_TOKENS["<pad>"],
        bos_token_id=SPECIAL_TOKENS["<bos>"], eos_token_id=SPECIAL_TOKENS["<eos>"]))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return save_ldm(path, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def model_path(name: str, folder: Path) -> tuple[Path, str]:
    """The folder of model ``name`` (tiny, sd14-random or a path) and its label; a model already built in ``folder`` is reused."""
    builders = {"tiny": (lambda p: build_tiny_ldm(p, seed=0, image_size=32), "tiny random model (32 x 32)"),
                "sd14-random": (build_sd14_random, "SD-1.4-sized random model (512 x 512)")}
    if name not in builders:
        return Path(name), f"model {name}"
    build, label = builders[name]
    path = folder / name
    if not (path / "model_index.json").exists():
        build(path)
    return path, label


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (tiny on a CPU, sd14-random on a GPU), --models-dir, --threads and --record."""
    cuda = torch.cuda.is_available()
    parser.add_argument("--model", default="sd14-random" if cuda else "tiny",
                        help="tiny, sd14-random (random weights in SD 1.4's shapes) or a diffusers folder")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where built models are kept and reused (default: a temporary folder, removed at exit)")
    parser.add_argument("--threads", type=int, default=0 if cuda else 1,
                        help="torch CPU threads (default: 1 on a CPU; on a GPU 0, torch's default, which loads models faster)")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")


def temporary_folder(prefix: str) -> Path:
    """A new folder for the models a run builds, removed when the process exits (an SD-1.4-sized one is gigabytes)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def setup(args: argparse.Namespace, prefix: str) -> tuple[Path, str, str]:
    """Apply --threads and find or build --model: its folder, its label and the device's name."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    path, label = model_path(args.model, args.models_dir or temporary_folder(prefix))
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or platform.machine())
    return path, label, name


def append_results(lines: list[str]) -> None:
    """Append a section to RESULTS.md (written with its heading when it does not exist yet)."""
    head = [] if RESULTS.exists() else ["# Benchmark results", "",
                                        "Appended by `python -m benchmarks.run NAME -- --record` (NAME: official, "
                                        "precision), with the device's name and the date.", ""]
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write("\n".join(head + lines + [""]) + "\n")
