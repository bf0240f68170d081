"""Accelerator policy: which ``Accelerator`` a recipe and the launcher's environment ask for (mixed precision,
DDP or FSDP2, gloo on CPU-only machines), and what longattn refuses (DeepSpeed, FSDP1, fp16 without CUDA)."""

from __future__ import annotations

import torch

from longattn_cli.errors import UserError


def make_accelerator(precision: str):
    """An ``Accelerator`` for ``training.mixed_precision`` (``auto``: bf16 on GPUs that have it, else none)."""
    import os

    from accelerate import Accelerator

    if precision == "auto":
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or (
            "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        )
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        raise UserError(
            "DeepSpeed is not supported (its engine would take over longattn's step and checkpoints); shard with "
            "FSDP2 instead (accelerate launch --use_fsdp --fsdp_version 2 ...) or launch data parallel with --multi_gpu"
        )
    fsdp, version = _flag("ACCELERATE_USE_FSDP"), os.environ.get("FSDP_VERSION", "1")
    if fsdp and version != "2":
        raise UserError(
            f"FSDP version {version}: longattn shards with FSDP2 (fully_shard); "
            "add --fsdp_version 2 to accelerate launch"
        )
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("training.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on this machine")
    check_cpu_bf16(precision)
    # Launched as several processes on a machine without a GPU: accelerate only forms a (gloo) group when asked
    # for the CPU explicitly; otherwise every process would train alone, unaware of the others.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = world > 1 and not torch.cuda.is_available()
    if fsdp and not torch.cuda.is_available() and world < 2:
        raise UserError(
            f"FSDP on this CPU-only machine needs at least 2 processes (WORLD_SIZE={world}); launch with "
            "accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 (or more)"
        )
    try:
        accelerator = Accelerator(mixed_precision=precision, step_scheduler_with_optimizer=False, cpu=cpu)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"training.mixed_precision={precision}: {exc}") from None
    if fsdp and cpu:
        _shard_on_cpu(accelerator)
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind in ("DEEPSPEED", "MEGATRON_LM"):
        raise UserError(f"accelerate's {kind} is not supported; launch data parallel (DDP) or FSDP2 instead")
    return accelerator


def check_cpu_bf16(precision: str) -> None:
    """bf16 on a CPU without bf16 arithmetic in hardware is one line, not a run slower than fp32."""
    if precision != "bf16" or torch.cuda.is_available():
        return
    from longattn_cli.devices import NATIVE_BF16_FLAGS, cpu_native_bf16

    if cpu_native_bf16() is False:
        raise UserError(
            "training.mixed_precision=bf16: this CPU has no bf16 arithmetic in hardware (no "
            f"{' or '.join(NATIVE_BF16_FLAGS)} flag), where bf16 trains slower than fp32; use "
            "training.mixed_precision=no"
        )


def _flag(name: str) -> bool:
    import os

    return os.environ.get(name, "").lower() in ("1", "true")


def _shard_on_cpu(accelerator) -> None:
    """FSDP2 over gloo on CPU processes: accelerate forms the group (``cpu=True``) but only switches to FSDP on
    accelerators, and torch's ``fully_shard`` runs on gloo; so the plugin that ``accelerate launch --use_fsdp``
    describes (its ``FSDP_*`` variables) is set on the state here, where accelerate would have set it."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # Both states: accelerate re-reads the type from PartialState's shared dict after prepare().
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
