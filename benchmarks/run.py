"""Run the benchmarks: ``python -m benchmarks.run [name ...] [-- options passed to each]``.

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


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    names, argv = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
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
