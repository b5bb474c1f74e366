"""The shapes world's small models on disk, like Hugging Face ones: ``config.json`` and ``model.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

M = TypeVar("M", bound=nn.Module)


def save_module(folder: str | Path, module: nn.Module, config: dict[str, Any]) -> Path:
    """Write ``config`` (what rebuilds the module) and the module's weights into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


def load_module(folder: str | Path, what: str, build: Callable[[dict[str, Any]], M], device: str = "cpu") -> M:
    """The module that ``build(config)`` makes, with the saved weights, in eval mode and without gradients.

    ``what`` names the model in the error raised when ``folder`` lacks either file.
    """
    folder = Path(folder)
    config_file, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no trained {what} in {folder} ({CONFIG_FILE} and {WEIGHTS_FILE})")
    module = build(json.loads(config_file.read_text()))
    module.load_state_dict(load_file(str(weights)))
    return module.eval().requires_grad_(False).to(device)
