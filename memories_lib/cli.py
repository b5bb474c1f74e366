"""The ``memories`` command: build the book, rerun one chapter, list profiles, train the mini world.

    memories book [--profile NAME] [-p NAME VALUE ...]
    memories run NOTEBOOK [--profile NAME] [-p NAME VALUE ...] [-o OUT]
    memories trainings --seeds SEED ... [--profile NAME] [--chapters NAME ...]
    memories tune-erasure [--profile NAME] [--seeds SEED ...] [--sweeps NAME ...] [--concepts NAME ...] [-n N]
    memories check-book [--html DIR] [PAGE ...]
    memories slides [--root ROOT] [--deck FILE] [-o OUT] [--pdf]
    memories audit --model PATH_OR_ID [--unet-checkpoint F] [--text-encoder DIR] --concept-images DIR
                   --reference-images DIR [--captions CSV] [--inversion NAME] [--out DIR] [...]
    memories export-example --model NAME --concept NAME --out DIR [--profile NAME] [-n N]
    memories profiles
    memories train-mini [ARGS ...]

Parameter values are parsed as YAML (``-p num_images 8`` is an int, ``-p concepts '[star]'``
a list). User errors (an unknown profile or parameter, a value of the wrong type, a failed
cell) print one line to stderr and exit non-zero.

Each subcommand imports what it needs when it runs, so that ``memories --help`` and argument
errors answer at once instead of after loading torch and diffusers (the CLI is the top layer:
nothing imports it, so these imports dodge no cycle).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_PROFILE = "mini"

EXIT_USAGE = 2    # a wrong profile, parameter or value: nothing ran
EXIT_FAILED = 1   # a chapter or the build failed


def _parameter_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"profile name or path to a profile YAML (default: {DEFAULT_PROFILE})")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a notebook parameter (VALUE is parsed as YAML); repeatable")
    parser.add_argument("--root", default=None, help="the book's root (default: the folder holding _toc.yml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memories",
        description="Execute and render the book reproducing 'Memories of Forgotten Concepts'.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    book = sub.add_parser("book", help="execute every chapter with papermill and build the HTML book")
    _parameter_args(book)

    run = sub.add_parser("run", help="execute one chapter and write the executed notebook")
    run.add_argument("notebook", metavar="NOTEBOOK", help="a chapter name (01_background) or a path to its .md")
    _parameter_args(run)
    run.add_argument("-o", "--output", default=None, help="executed notebook path (default: _executed/NAME.ipynb)")

    trainings = sub.add_parser(
        "trainings", help="execute chapters with the world trained again with other seeds and compare their numbers")
    trainings.add_argument("--seeds", nargs="+", type=int, required=True, metavar="SEED",
                           help="training seeds other than the profile's own")
    trainings.add_argument("--chapters", nargs="+", default=["02_embedded_world", "03_erasure"], metavar="NAME",
                           help="chapters to execute with every training (default: 02_embedded_world 03_erasure)")
    trainings.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile name or YAML path (default: {DEFAULT_PROFILE})")
    trainings.add_argument("--root", default=None, help="the book's root (default: the folder holding _toc.yml)")
    trainings.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    tune = sub.add_parser(
        "tune-erasure", help="run the profile's erasure sweeps (the trade-off figures of chapter 3) into the store")
    tune.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile name or YAML path (default: {DEFAULT_PROFILE})")
    tune.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                      help="run them on the world trained with each of these seeds (default: the profile's own; "
                           "a world not trained yet is trained first)")
    tune.add_argument("--sweeps", nargs="+", default=None, metavar="NAME", help="only these sweeps of the profile")
    tune.add_argument("--concepts", nargs="+", default=None, metavar="NAME", help="only these concepts")
    tune.add_argument("-n", type=int, default=None, help="generations per concept and point (default: the profile's)")
    tune.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    check = sub.add_parser("check-book", help="read every page of the built book in headless Chromium (the reader's checks)")
    check.add_argument("pages", nargs="*", metavar="PAGE", help="only these pages (default: every page of the book)")
    check.add_argument("--html", default=None, help="the built book (default: ROOT/_build/html)")
    check.add_argument("--root", default=None, help="the book's root (default: the folder holding _toc.yml)")

    slides = sub.add_parser("slides", help="build the slide deck from the executed chapters (their figures and glued numbers)")
    slides.add_argument("--root", default=None, help="the book's root (default: the folder holding _toc.yml)")
    slides.add_argument("--deck", default=None, help="the deck file (default: ROOT/slides/deck.md)")
    slides.add_argument("-o", "--output", default=None, help="the HTML deck (default: ROOT/_build/slides/index.html)")
    slides.add_argument("--pdf", action="store_true", help="also print the deck to a PDF beside it (headless Chromium)")

    audit = sub.add_parser(
        "audit", help="the paper's analysis of any diffusers text-to-image model on two image folders",
        description="Invert every image of a folder showing a concept (E) and of a reference folder (R) with a model "
                    "(optionally with an erased UNet checkpoint or text encoder applied), and report the PSNR of the "
                    "regenerations, the NLL of the seeds and the relative distance (exact and official) with "
                    "intervals. Results go to the results store ($MEMORIES_CACHE): a rerun resumes. Under "
                    "`accelerate launch --num_processes K -m memories_lib.cli audit ...` the images are shared "
                    "between the processes.")
    audit.add_argument("--model", required=True, metavar="PATH_OR_ID",
                       help="a diffusers-layout folder or hub id (HF_HUB_OFFLINE honoured)")
    audit.add_argument("--unet-checkpoint", default=None, metavar="FILE",
                       help="erased UNet weights: a full state dict (.pt, diffusers names) or edited weights (.safetensors)")
    audit.add_argument("--text-encoder", default=None, metavar="DIR", help="an erased CLIP text encoder folder (AdvUnlearn)")
    audit.add_argument("--concept-images", required=True, metavar="DIR", help="images showing the erased concept (E)")
    audit.add_argument("--reference-images", required=True, metavar="DIR",
                       help="images without it (R), e.g. COCO; captions from its metadata.csv (file_name,text) if present")
    audit.add_argument("--captions", default=None, metavar="CSV",
                       help="captions of the concept images, columns file_name,text (default: DIR/metadata.csv if present, "
                            "else the empty prompt)")
    audit.add_argument("--inversion", default="renoise", help="inversion method (default: renoise, the paper's)")
    audit.add_argument("--num-steps", type=int, default=50, help="DDIM steps (default: 50)")
    audit.add_argument("--max-images", type=int, default=None, metavar="N",
                       help="at most N images of each folder, chosen by --seed (default: all)")
    audit.add_argument("--seed", type=int, default=0, help="seed of the choice, the bootstrap and the N(0, I) reference")
    audit.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the intervals (default: 1000)")
    audit.add_argument("--batch-size", type=int, default=None, help="images per UNet call (default: what memory allows)")
    audit.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: the GPU when present)")
    audit.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                       help="auto (default): float16 on a GPU for ddim and renoise (measured: benchmarks/RESULTS.md), "
                            "else float32; float32 is the official code's precision")
    audit.add_argument("--judges", nargs=2, default=None, metavar=("PROFILE", "CONCEPT"),
                       help="score the regenerations with this profile's detector and similarity model for CONCEPT")
    audit.add_argument("--out", default="audit", help="the report's folder (default: ./audit)")
    audit.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    example = sub.add_parser(
        "export-example", help="write a world's base model, one erased model and two image folders for `memories audit`")
    example.add_argument("--model", required=True, metavar="NAME", help="an erased model of the profile (e.g. esd-u)")
    example.add_argument("--concept", required=True, help="the concept it erases (e.g. triangle)")
    example.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder")
    example.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile name or YAML path (default: {DEFAULT_PROFILE})")
    example.add_argument("-n", type=int, default=50, help="images per folder (default: 50)")
    example.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    sub.add_parser("profiles", help="list the shipped profiles")
    sub.add_parser("train-mini", help="train the embedded mini world (arguments go to memories_lib.worlds.shapes.training.cli)",
                   add_help=False)
    return parser


def _overrides(pairs: Sequence[Sequence[str]]) -> dict:
    from .book import ParameterError, parse_value

    overrides = {}
    for name, text in pairs:
        if name in overrides:
            raise ParameterError(f"parameter {name!r} is given twice")
        overrides[name] = parse_value(text)
    return overrides


def _cmd_book(args: argparse.Namespace) -> int:
    from .book import build_book

    index = build_book(args.profile, _overrides(args.parameter), args.root, progress=not args.quiet)
    if index is not None:  # None: a process of a launched job other than the main one, which builds it
        print(f"The book is at {index}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .book import execute_chapter, find_root, resolve_chapter
    from .core import distributed

    root = Path(args.root).resolve() if args.root else find_root()
    chapter = resolve_chapter(root, args.notebook)
    output = execute_chapter(chapter, args.profile, _overrides(args.parameter), output=args.output,
                             progress=not args.quiet)
    if distributed.launch().is_main:  # under a launcher, the main process writes the executed copy
        print(f"Executed {chapter.source.name} -> {output}")
    return 0


def _cmd_trainings(args: argparse.Namespace) -> int:
    from .book.trainings import compare_trainings

    path = compare_trainings(args.profile, args.seeds, args.chapters, args.root, progress=not args.quiet)
    print(f"The comparison is at {path}; chapters {', '.join(args.chapters)} show it when rebuilt")
    return 0


def _cmd_tune_erasure(args: argparse.Namespace) -> int:
    import time

    from .book import ParameterError
    from .core.tables import setting_text
    from .experiments.erasure_tuning import profile_sweeps, run_tuning
    from .worlds import open_world

    start = time.perf_counter()
    world = open_world(args.profile)
    try:  # a wrong sweep, concept, seed or count is refused before any work
        if not profile_sweeps(world, args.sweeps):
            raise ValueError(f"the profile {world.profile.name!r} defines no tuning sweeps (parameters.tuning)")
        world.check_concepts(args.concepts or world.profile.concepts)
        if args.n is not None and args.n < 1:
            raise ValueError(f"-n must be at least 1, got {args.n}")
        if args.seeds and world.training_seed() is None:
            raise ValueError(f"the {world.kind} world is not trained by this project: it has no training seeds")
    except ValueError as err:
        raise ParameterError(str(err)) from None
    tables = run_tuning(world, args.seeds, args.sweeps, args.concepts, args.n, progress=not args.quiet)
    for seed, table in tables.items():
        shown = table.assign(value=table["value"].map(setting_text),
                             erased=100 * table["erased"], others=100 * table["others"],
                             others_base=100 * table["others_base"], lost_most=100 * table["most_hurt_loss"])
        print(f"\nworld trained with seed {seed} (accuracies in %):")
        print(shown[["sweep", "value", "concept", "erased", "others", "others_base", "passes", "most_hurt",
                     "lost_most"]].to_string(index=False, float_format="{:.1f}".format))
    print(f"\n{sum(len(t) for t in tables.values())} points in {time.perf_counter() - start:.0f} s; "
          "chapter 3 reads them from the store when rebuilt")
    return 0


def _cmd_check_book(args: argparse.Namespace) -> int:
    from .book import find_root
    from .book.reader import book_pages, check_book

    root = Path(args.root).resolve() if args.root else find_root()
    html = Path(args.html).resolve() if args.html else root / "_build" / "html"
    pages = [Path(p).resolve() for p in args.pages] or None
    problems = check_book(root, html, pages)
    for problem in problems:
        print(problem)
    checked = len(pages) if pages else len(book_pages(html))
    if problems:
        n = len(problems)
        print(f"{n} problem{'s' if n != 1 else ''} on {len({p.page for p in problems})} of {checked} pages",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"{checked} pages pass the reader's checks")
    return 0


def _cmd_slides(args: argparse.Namespace) -> int:
    from .book import find_root
    from .book.slides import build_slides, deck_summary, export_pdf, pdf_pages

    root = Path(args.root).resolve() if args.root else find_root()
    path = build_slides(root, args.deck, args.output)
    print(f"The slides are at {path} ({deck_summary(path)}); keys: arrows or space, n for the speaker notes")
    if args.pdf:
        pdf = export_pdf(path)
        print(f"and printed to {pdf} ({pdf_pages(pdf)} pages)")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from .book import ParameterError
    from .core.store import default_store
    from .experiments.audit import AuditError, AuditSettings, run_audit

    if args.quiet:  # the model loaders' own bars too
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    try:
        settings = AuditSettings(inversion=args.inversion, num_steps=args.num_steps, seed=args.seed,
                                 max_images=args.max_images, n_boot=args.n_boot, batch_size=args.batch_size,
                                 device=args.device, dtype=args.dtype)
        result = run_audit(args.model, args.concept_images, args.reference_images, default_store(),
                           unet_checkpoint=args.unet_checkpoint, text_encoder=args.text_encoder, captions=args.captions,
                           settings=settings, judges=tuple(args.judges) if args.judges else None, out=args.out,
                           progress=not args.quiet)
    except (AuditError, FileNotFoundError) as err:
        raise ParameterError(str(err)) from None
    if result is not None:
        s = result.summary
        print(f"E: PSNR {s['psnr']:.2f} dB, R: {s['ref_psnr']:.2f} dB; relative distance (EMD) {s['rd_emd']:.2f} "
              f"[{s['rd_emd_low']:.2f}, {s['rd_emd_high']:.2f}], official ratio {s['rd_w2_50']:.2f}")
        print(f"The report is at {result.out / 'report.html'} (every number in {result.out / 'results.json'})")
    return 0


def _cmd_export_example(args: argparse.Namespace) -> int:
    from .book import ParameterError
    from .core.store import default_store
    from .experiments.audit import AuditError, export_example
    from .worlds import open_world

    world = open_world(args.profile)
    try:
        if args.n < 2:
            raise AuditError(f"-n must be at least 2, got {args.n}")
        example = export_example(world, args.model, args.concept, args.out, n=args.n, seed=world.profile.seed,
                                 store=default_store(), progress=not args.quiet)
    except (AuditError, ValueError) as err:
        raise ParameterError(str(err)) from None
    print(f"Wrote {args.out}. Audit it with:\n  {example.command(str(Path(args.out) / 'audit'))}")
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from .core.profile import ProfileError, list_profiles, load_profile

    for name in list_profiles():
        try:
            description = load_profile(name).description
        except ProfileError as err:
            description = f"(does not load: {err})"
        marker = " (default)" if name == DEFAULT_PROFILE else ""
        print(f"{name}{marker}: {description}")
    return 0


def _cmd_train_mini(argv: list[str]) -> int:
    from .worlds.shapes.training.cli import main as train_main  # owned by the shapes world; imported when asked

    result = train_main(argv)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``memories`` console script; returns the exit code."""
    from .book import BookError, ParameterError
    from .core.profile import ProfileError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train-mini":  # everything after it belongs to the trainer
            return _cmd_train_mini(argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # argparse printed its usage message (or --help)
            return int(exit_.code or 0)
        commands = {"book": _cmd_book, "run": _cmd_run, "trainings": _cmd_trainings, "tune-erasure": _cmd_tune_erasure,
                    "check-book": _cmd_check_book, "slides": _cmd_slides, "profiles": _cmd_profiles,
                    "audit": _cmd_audit, "export-example": _cmd_export_example}
        return commands[args.command](args)
    except (ParameterError, ProfileError) as err:
        print(f"memories: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BookError as err:
        print(f"memories: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("memories: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
