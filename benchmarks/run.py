"""Run the benchmarks: ``python -m benchmarks.run [name ...] [--] [options passed to each]``.

The names come first; everything from the first argument that starts with ``-`` on (a lone
``--`` is dropped) goes to every named benchmark: ``official --images 16`` and
``official -- --images 16`` are the same run.

Every ``benchmarks/bench_<name>.py`` module has ``main(argv: list[str] | None) -> dict``; it
prints its measured ratios with their goals and PASS/FAIL and returns them. A goal that is
missed is reported, not raised (timings vary by 15-25% between runs on shared CPUs); the
exit status is 1 only when a benchmark crashes or a name is unknown.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

PREFIX = "bench_"


def discover() -> list[str]:
    """The names of the benchmarks (``bench_inversion.py`` -> ``inversion``), sorted."""
    here = Path(__file__).parent
    return sorted(m.name[len(PREFIX):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith(PREFIX))


def run(names: list[str] | None = None, argv: list[str] | None = None) -> dict[str, dict]:
    """Run the named benchmarks (all when none are named) and return their results by name."""
    available = discover()
    names = names or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; the benchmarks are {available}")
    results = {}
    for name in names:
        print(f"== benchmark {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{PREFIX}{name}")
        results[name] = module.main(list(argv or []))
    return results


def split_arguments(args: list[str]) -> tuple[list[str], list[str]]:
    """(benchmark names, options for each): the names are the arguments before the first that starts with '-'."""
    first = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, options = list(args[:first]), list(args[first:])
    if options[:1] == ["--"]:
        options = options[1:]
    return names, options


def main(args: list[str] | None = None) -> int:
    names, argv = split_arguments(sys.argv[1:] if args is None else args)
    try:
        run(names, argv)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 1
    except Exception:  # a crashed benchmark is a failure of the run
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
