"""Resolving a model argument (hub id or local directory) to a local directory, with one-line errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from longattn_cli.errors import UserError

# Files worth fetching for a checkpoint: configs, tokenizers and safetensors weights.
_ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "*.py"]


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a path."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be asked at all: not in offline mode, and its host resolves."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def resolve(source: str) -> Path:
    """A local directory holding ``source``: the directory itself, or a hub snapshot.

    Raises:
        UserError: the path does not exist, or the hub id is neither cached nor reachable.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{source!r} is a directory without config.json; expected a Hugging Face checkpoint directory"
            )
        return path
    if path.exists():
        raise UserError(
            f"{source!r} is a file; expected a checkpoint directory or a hub id such as 'roberta-base'"
        )
    if _looks_like_path(source):
        raise UserError(f"model path {source!r} does not exist; expected a checkpoint directory or a hub id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=_ALLOW, local_files_only=True))
    except Exception:  # not cached: fall through to the network
        pass
    if not hub_reachable():
        raise UserError(
            f"{source!r} is not a local directory, and as a hub id it is not cached and the Hugging Face hub "
            "is unreachable (offline?); pass a local checkpoint directory"
        )
    try:
        local = Path(snapshot_download(source, allow_patterns=_ALLOW))
        if not any(local.glob("*.safetensors")):  # older repos ship only pickled weights
            local = Path(snapshot_download(source, allow_patterns=_ALLOW + ["pytorch_model*.bin"]))
        return local
    except Exception as exc:  # RepositoryNotFound, gated, HTTP errors...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot fetch {source!r} from the Hugging Face hub: {first}") from None
