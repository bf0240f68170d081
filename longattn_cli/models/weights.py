"""Reading a checkpoint directory (its ``config.json`` and its tensors: safetensors, or pickles only through
``torch.load(weights_only=True)``), and writing one whole or not at all."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError


def read_config(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {directory / 'config.json'}: {exc}") from None


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: safetensors (single or sharded), else a pickle that
    ``torch.load(weights_only=True)`` accepts."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(f)))
        return sd
    pickles = sorted(directory.glob("pytorch_model*.bin"))
    if not pickles:
        raise UserError(f"no weights in {directory}: expected model.safetensors or pytorch_model.bin")
    sd = {}
    for f in pickles:
        try:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise UserError(
                f"refusing to load {f}: not loadable with weights_only=True ({type(exc).__name__})"
            ) from None
    return sd


def write_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """``fill`` a temporary sibling of ``out``, then rename it into place (replacing ``out``): an error or
    Ctrl-C on the way leaves ``out`` as it was and no partial folder behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "x")
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
