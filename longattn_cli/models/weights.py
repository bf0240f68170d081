"""Reading a checkpoint directory: its ``config.json`` and its tensors (safetensors, or pickles only through
``torch.load(weights_only=True)``)."""

from __future__ import annotations

import json
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
