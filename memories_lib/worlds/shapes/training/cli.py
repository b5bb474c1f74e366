"""``memories train-mini``: train (or find in the cache) every model of the shapes world."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ....core.profile import load_profile
from ..world import ShapesWorld
from . import STAGES, Config, ensure_trained, stage_path, training_report


def _read_config_arg(value: str | None) -> Config:
    """``--config``: a preset name, or a YAML/JSON file of a training config."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise SystemExit(f"no config file {path}")
        import yaml

        return yaml.safe_load(path.read_text())
    return value


def profile_training_config(name: str) -> Mapping[str, Any]:
    """``--profile``: the training config of a shapes-world profile (its ``world.training``)."""
    profile = load_profile(name)
    if profile.world.kind != ShapesWorld.kind:
        raise SystemExit(f"{profile.source} is a {profile.world.kind!r} world, not the shapes world: nothing to train")
    return ShapesWorld.parse_spec(profile).training


def main(argv: Sequence[str] | None = None) -> int:
    """``memories train-mini``: train (or find in the cache) every model of the shapes world."""
    parser = argparse.ArgumentParser(prog="memories train-mini", description=main.__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="a preset name (full, tiny) or a YAML/JSON training config file")
    group.add_argument("--profile", help="take the training config of this profile (name or YAML path)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: $MEMORIES_THREADS or every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    config = profile_training_config(args.profile) if args.profile else _read_config_arg(args.config)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    start = time.perf_counter()
    ensure_trained(config, stages=stages, device=args.device, threads=args.threads, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    report = training_report(config)
    print("shapes world:")
    for stage in STAGES:
        if stage not in report:
            print(f"  {stage}: not trained ({stage_path(config, stage)})")
            continue
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in sorted(report[stage].items()) if k not in ("started_at", "finished_at"))
        print(f"  {stage}: {stage_path(config, stage)}\n    {shown}")
    print(f"this call took {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
