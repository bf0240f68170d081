"""Training checkpoints: written atomically, pruned to the last N, and checked before a run resumes from one.

A checkpoint directory ``OUTPUT/checkpoints/step-000120`` holds the model and tokenizer in Hugging Face format
(loadable by ``longattn fill-mask`` and ``from_pretrained``), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt``
(the random state of every process) and ``trainer_state.json`` (step, tokens, best metric, and the run's
signature: recipe, tokenizer hash, data fingerprint, world size and library versions). It is written under a
temporary name and renamed, so a crash never leaves a half-written checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError

STATE_FILE = "trainer_state.json"
# Keys that may change between a run and its resumption without changing what is computed.
VOLATILE = {
    "training.resume",
    "training.overwrite",
    "training.log_every",
    "training.save_every",
    "training.keep_last",
    "training.eval_every",
    "training.output_dir",
    "data.cache_dir",
}
# Keys that set where a run ends: a resumed run may change them to continue past the step it reached
# (the first N steps do not depend on them, except through the learning-rate schedule; see README).
EXTENDABLE = {"training.max_steps", "training.epochs"}


SHARDED = "sharded"  # FSDP's model and optimizer shards (torch.distributed.checkpoint), one per process


def versions() -> dict[str, str]:
    """Versions of the libraries whose numerics a resumed run depends on."""
    import accelerate
    import datasets
    import transformers

    import longattn_cli

    return {
        "longattn": longattn_cli.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (dict-valued fields such as attention_settings are flattened too)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def signature(recipe: dict[str, Any], tokenizer: str, data: str, world_size: int) -> dict[str, Any]:
    """What must be equal for a resumed run to continue the interrupted one exactly."""
    flat = {k: v for k, v in flatten(recipe).items() if k not in VOLATILE}
    if not flat.get("training.compile"):  # off: as in checkpoints made before the key existed
        flat.pop("training.compile", None)
    return {
        "recipe": flat,
        "tokenizer_hash": tokenizer,
        "data_fingerprint": data,
        "world_size": world_size,
        "versions": versions(),
    }


def check_signature(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Fail fast, naming what differs, when a checkpoint was made by a different run."""
    diffs = []
    for key in ("tokenizer_hash", "data_fingerprint", "world_size"):
        if saved.get(key) != current[key]:
            diffs.append(f"{key.replace('_', ' ')} {saved.get(key)} in the checkpoint, {current[key]} now")
    old, new = saved.get("recipe", {}), current["recipe"]
    for key in sorted(set(old) | set(new)):
        if key not in EXTENDABLE and old.get(key) != new.get(key):
            diffs.append(f"{key}={old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    for lib, version in current["versions"].items():
        if saved.get("versions", {}).get(lib) != version:
            diffs.append(f"{lib} {saved.get('versions', {}).get(lib)} in the checkpoint, {version} now")
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise UserError(
            f"cannot resume from {where}: it was made by a different run: {'; '.join(diffs[:3])}{more}"
        )


def extension(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list]:
    """The end-of-run keys that differ between a checkpoint's signature and the run resuming it:
    ``{key: [old, new]}`` (empty when the run is not being extended)."""
    old, new = saved.get("recipe", {}), current["recipe"]
    return {k: [old.get(k), new.get(k)] for k in sorted(EXTENDABLE) if old.get(k) != new.get(k)}


def rng_state() -> dict[str, Any]:
    """This process's random state: torch (CPU and CUDA) and Python's ``random``."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:07d}"


def staging(directory: Path) -> Path:
    """Where a checkpoint is written before it is renamed into place (ignored by :func:`list_checkpoints`)."""
    return directory.with_name(f".tmp-{directory.name}")


def begin(directory: Path) -> Path:
    """An empty staging directory for ``directory`` (call on the main process only)."""
    tmp = staging(directory)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save(
    directory: Path,
    model,
    tokenizer,
    optimizer,
    scheduler,
    rng_states: list,
    state: dict[str, Any],
    keep_last: int,
    staged: bool = False,
) -> None:
    """Write a checkpoint atomically (call on the main process only) and keep the newest ``keep_last``.

    ``staged``: the staging directory already holds files every process wrote (FSDP's sharded model and
    optimizer, ``SHARDED``); ``optimizer`` is then ``None``.
    """
    tmp = staging(directory) if staged else begin(directory)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_states, tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, default=str))
    if directory.exists():  # the same step saved again (an interrupted run at a save step): replace it
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    for old in list_checkpoints(directory.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def clear_previous_run(output_dir: Path, overwrite: bool, delete: bool) -> None:
    """Refuse to mix a new run's checkpoints with an earlier run's, unless asked to remove the earlier ones.

    Every process calls it (so all fail alike); only the one with ``delete`` removes files.
    """
    found = list_checkpoints(output_dir / "checkpoints")
    if not found:
        return
    if not overwrite:
        raise UserError(
            f"{output_dir} holds checkpoints of an earlier run (up to {found[-1].name}); continue it with --resume "
            "latest, or start afresh with training.overwrite=true (or another training.output_dir)"
        )
    if not delete:
        return
    for stale in (output_dir / "checkpoints", output_dir / "best"):
        shutil.rmtree(stale, ignore_errors=True)
    (output_dir / "metrics.jsonl").unlink(missing_ok=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())


def find(output_dir: Path, resume: str) -> Path:
    """The checkpoint that ``resume`` names: ``latest`` (the newest under ``output_dir``) or a directory."""
    if resume == "latest":
        found = list_checkpoints(output_dir / "checkpoints")
        if not found:
            raise UserError(f"--resume latest: no checkpoint under {output_dir / 'checkpoints'}")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"--resume {resume}: not a training checkpoint (no {STATE_FILE}); pass 'latest' or a step-* directory"
        )
    return path


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path / STATE_FILE}: {exc}") from None


def load_weights(model, path: Path) -> None:
    """Load a checkpoint's weights into ``model`` in place (tied weights are re-tied)."""
    from longattn_cli.models.weights import read_state_dict

    load_state(model, read_state_dict(path), str(path))


def load_state(model, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state_dict`` into ``model`` in place (tied weights are re-tied); ``what`` names it in errors."""
    result = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise UserError(f"{what}: weights do not fit the model ({(missing + result.unexpected_keys)[0]})")
    if model.config.tie_word_embeddings:
        model.tie_weights()


def load_training_state(path: Path, optimizer, scheduler, rank: int) -> dict[str, Any]:
    """Optimizer (unless ``None``: FSDP loads its shards itself) and scheduler state; returns this process's
    random state (set it last)."""
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    return torch.load(path / "rng.pt", weights_only=True)[rank]
