"""The training loop shared by ``longattn pretrain`` and ``longattn finetune``, on accelerate.

A command describes its work as a :class:`Job` (model, objective, data, collator, evaluation); this loop does
the rest the same way for both: data parallel through accelerate (plain ``longattn`` is one process,
``accelerate launch -m longattn_cli`` is many), gradient accumulation, clipping, warm-up and schedule, mixed
precision, checkpoints that resume bit-exactly, SIGINT/SIGTERM handling and NaN detection.

The data order is a function of the step alone (a seeded permutation per epoch, batch ``i`` of process ``r``
taking its slice of it), and masking is seeded per batch, so "where the data was" is just the step number:
a resumed run needs no iterator state to continue exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longattn_cli import trainstate
from longattn_cli.config import to_dict
from longattn_cli.errors import UserError
from longattn_cli.progress import Reporter


@dataclasses.dataclass
class Job:
    """What a command hands to the loop.

    Attributes:
        model: the Hugging Face model that is saved (and wrapped by ``objective``).
        objective: ``objective(**batch) -> scalar loss``; owns ``model``.
        tokenizer: saved with every checkpoint.
        train: a map-style ``datasets.Dataset``, or an ``IterableDataset`` when streaming.
        collate: ``(examples, batch_key) -> batch of tensors``; ``batch_key`` is unique per micro-batch.
        tokens: number of real tokens in a batch (for tokens/s).
        fingerprint: ``{"tokenizer": hash, "data": fingerprint}``, recorded in checkpoints.
        evaluate: ``model -> metrics``, run on the main process; ``None`` when there is no validation data.
        metric_for_best: which metric picks the best checkpoint; ``greater_is_better`` says which way.
        finish: ``model -> summary rows`` after training (e.g. writes predictions), main process only.
        stream_length: examples per epoch of a streamed dataset.
    """

    model: Any
    objective: nn.Module
    tokenizer: Any
    train: Any
    collate: Callable[[list[dict[str, Any]], int], dict[str, torch.Tensor]]
    tokens: Callable[[dict[str, torch.Tensor]], int]
    fingerprint: dict[str, str]
    evaluate: Callable[[Any], dict[str, float]] | None = None
    metric_for_best: str = "loss"
    greater_is_better: bool = False
    finish: Callable[[Any], dict[str, Any]] | None = None
    stream_length: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


class Order:
    """Which examples form micro-batch ``(step, micro)`` on process ``rank``: a seeded permutation per epoch.

    One step takes ``batch × world × accumulation`` examples; an epoch is the whole steps that fit (a
    remainder smaller than one step is left for the next epoch's shuffle).
    """

    def __init__(self, n: int, batch: int, world: int, rank: int, accumulation: int, seed: int):
        self.n, self.batch, self.world, self.rank, self.accumulation, self.seed = (
            n,
            batch,
            world,
            rank,
            accumulation,
            seed,
        )
        self.per_step = batch * world * accumulation
        self.steps_per_epoch = n // self.per_step
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training data has {n} example(s), fewer than one step takes (batch_size {batch} × "
                f"{world} process(es) × gradient_accumulation_steps {accumulation}); lower them or add data"
            )
        self._epoch, self._perm = -1, None

    def indices(self, step: int, micro: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        start = within * self.per_step + (micro * self.world + self.rank) * self.batch
        return self._perm[start : start + self.batch]

    def key(self, step: int, micro: int) -> int:
        """A number unique to this micro-batch of this process (seeds its masking)."""
        return (step * self.accumulation + micro) * self.world + self.rank


class StreamOrder:
    """The same contract for a streamed dataset: examples in stream order, process ``r`` taking its slice."""

    def __init__(
        self, ds, length: int, batch: int, world: int, rank: int, accumulation: int, start_step: int
    ):
        self.batch, self.world, self.rank, self.accumulation = batch, world, rank, accumulation
        self.per_step = batch * world * accumulation
        self.steps_per_epoch = max(1, length // self.per_step)
        self.ds = ds
        self.it = itertools.islice(self._forever(), start_step * self.per_step, None)

    def _forever(self):
        for _epoch in itertools.count():
            empty = True
            for ex in self.ds:
                empty = False
                yield ex
            if empty:
                raise UserError("the streamed training data holds no examples")

    def indices(self, step: int, micro: int) -> list[dict[str, Any]]:
        group = list(itertools.islice(self.it, self.batch * self.world))
        return group[self.rank * self.batch : (self.rank + 1) * self.batch]

    def key(self, step: int, micro: int) -> int:
        return (step * self.accumulation + micro) * self.world + self.rank


class Stop:
    """SIGINT/SIGTERM set a flag that the loop reads at the next step boundary; a second signal aborts."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum


def make_accelerator(precision: str):
    import os

    from accelerate import Accelerator

    if precision == "auto":
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or (
            "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        )
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("training.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on this machine")
    # Launched as several processes on a machine without a GPU: accelerate only forms a (gloo) group when asked
    # for the CPU explicitly; otherwise every process would train alone, unaware of the others.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    try:
        return Accelerator(mixed_precision=precision, step_scheduler_with_optimizer=False, cpu=cpu)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"training.mixed_precision={precision}: {exc}") from None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters, with no weight decay on biases, LayerNorms and embeddings' padding-free vectors."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if p.dim() < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def run(recipe, build: Callable[[Any, Any], Job], on_step: Callable[[int, Any], None] | None = None) -> int:
    """Train ``recipe`` with the job ``build(recipe, accelerator)`` returns.

    Args:
        recipe: a :class:`~longattn_cli.config.PretrainRecipe` or :class:`~longattn_cli.config.FinetuneRecipe`.
        build: ``(recipe, accelerator) -> Job``.
        on_step: called as ``on_step(step, model)`` after every optimizer step (for tests and extensions).

    Returns:
        The exit code: 0 when done, 130/143 when SIGINT/SIGTERM stopped the run after saving a checkpoint.

    Raises:
        UserError: bad input, a checkpoint from a different run, or a NaN/inf loss (the message names the step).
    """
    import datasets
    from accelerate.utils import gather_object, set_seed
    from transformers import get_scheduler
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # our own progress bar and notes say what happens
    hf_logging.disable_progress_bar()
    cfg = recipe.training
    out = Path(cfg.output_dir)
    accelerator = make_accelerator(cfg.mixed_precision)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    set_seed(cfg.seed)  # identical initial weights on every process
    if cfg.resume:  # a different recipe fails before any data is read
        where = trainstate.find(out, cfg.resume)
        saved = trainstate.read_state(where)
        early = trainstate.signature(
            to_dict(recipe),
            saved["signature"]["tokenizer_hash"],
            saved["signature"]["data_fingerprint"],
            world,
        )
        trainstate.check_signature(saved["signature"], early, where)
    with accelerator.main_process_first():  # the main process builds caches; the others then reuse them
        job = build(recipe, accelerator)
    if job.stream_length is None:
        order = Order(len(job.train), cfg.batch_size, world, rank, cfg.gradient_accumulation_steps, cfg.seed)
    else:
        order = None  # built below, once the start step is known
    steps_per_epoch = (
        order.steps_per_epoch
        if order
        else max(1, job.stream_length // (cfg.batch_size * world * cfg.gradient_accumulation_steps))
    )
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(param_groups(job.model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total
    )
    sig = trainstate.signature(to_dict(recipe), job.fingerprint["tokenizer"], job.fingerprint["data"], world)

    state: dict[str, Any] = {"step": 0, "tokens": 0, "best_metric": None, "best_step": None}
    rng = None
    if cfg.resume:
        trainstate.check_signature(saved["signature"], sig, where)
        trainstate.load_weights(job.model, where)
        rng = trainstate.load_training_state(where, optimizer, scheduler, rank)
        state.update({k: saved[k] for k in state})
    objective, optimizer = accelerator.prepare(job.objective, optimizer)
    if order is None:
        order = StreamOrder(
            job.train,
            job.stream_length,
            cfg.batch_size,
            world,
            rank,
            cfg.gradient_accumulation_steps,
            state["step"],
        )
    if rng is not None:
        trainstate.set_rng_state(rng)  # last: everything above may have drawn random numbers
    else:
        torch.manual_seed(cfg.seed * 1_000_003 + rank)  # dropout differs across processes, as it should
    if main:
        _write_recipe(out, recipe)

    def save_checkpoint() -> Path:
        where = trainstate.checkpoint_dir(out, state["step"])
        rngs = gather_object([trainstate.rng_state()])
        if main:
            record = dict(state, signature=sig, total_steps=total)
            trainstate.save(
                where,
                accelerator.unwrap_model(objective).model,
                job.tokenizer,
                optimizer.optimizer,
                scheduler,
                rngs,
                record,
                cfg.keep_last,
            )
        accelerator.wait_for_everyone()
        return where

    device = accelerator.device
    params = [p for p in job.model.parameters() if p.requires_grad]
    last_saved = trainstate.list_checkpoints(out / "checkpoints")[-1:] or [None]
    last_checkpoint = last_saved[0]
    start_step = state["step"]
    began = time.perf_counter()
    with Stop() as stop, Reporter(main, out, total, state["step"], cfg.log_every) as report:
        for note in job.notes:
            report.note(note)
        if cfg.resume:
            report.note(f"resumed from {where} at step {state['step']}")
        objective.train()
        while state["step"] < total:
            step = state["step"]
            loss_sum = torch.zeros((), device=device)
            tokens = 0
            for micro in range(cfg.gradient_accumulation_steps):
                picked = order.indices(step, micro)
                examples = _rows(job.train, picked) if order.__class__ is Order else picked
                batch = {k: v.to(device) for k, v in job.collate(examples, order.key(step, micro)).items()}
                last = micro == cfg.gradient_accumulation_steps - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(objective):
                    loss = objective(**batch)
                    accelerator.backward(loss / cfg.gradient_accumulation_steps)
                loss_sum += loss.detach().float()
                tokens += job.tokens(batch)
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else None
            # One all-reduce carries the loss, the token count and whether any process was signalled to stop.
            stats = torch.tensor(
                [loss_sum.item() / cfg.gradient_accumulation_steps, tokens, float(stop.signal is not None)],
                device=device,
                dtype=torch.float64,
            )
            stats = accelerator.reduce(stats, "sum")
            mean_loss = stats[0].item() / world
            if not math.isfinite(mean_loss):
                optimizer.zero_grad(set_to_none=True)
                kept = (
                    f"the last good checkpoint is {last_checkpoint}"
                    if last_checkpoint
                    else "no checkpoint was written yet"
                )
                raise UserError(
                    f"loss is {mean_loss} at step {step + 1}; training stopped and {kept} (lower training.learning_rate or check the data)"
                )
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step = step + 1
            state["tokens"] += int(stats[1].item())
            norm = None if grad_norm is None else float(grad_norm)
            report.step(step, mean_loss, lr, int(stats[1].item()), norm, step / steps_per_epoch)
            if on_step:
                on_step(step, job.model)

            if job.evaluate and _due(step, cfg.eval_every, steps_per_epoch, total):
                _evaluate(job, accelerator, objective, state, out, report, step)
            stopping = stats[2].item() > 0
            if stopping or step == total or (cfg.save_every and step % cfg.save_every == 0):
                last_checkpoint = save_checkpoint()
            if stopping:
                name = signal.Signals(stop.signal).name if stop.signal else "a signal on another process"
                report.note(
                    f"stopped by {name} at step {step}; checkpoint saved to {last_checkpoint}; continue with --resume latest"
                )
                return 128 + (stop.signal or signal.SIGTERM)

        rows = _finish(job, accelerator, objective, state, out, report)
    elapsed = time.perf_counter() - began
    report.summary(
        {
            "steps": f"{start_step} → {state['step']}",
            "processes": world,
            "tokens": state["tokens"],
            "time (s)": round(elapsed, 1),
            "tokens/s": report.tokens_per_second,
            "final loss": report.last.get("loss", float("nan")),
            **rows,
            "model": str(out),
            "last checkpoint": str(last_checkpoint),
        }
    )
    return 0


def _rows(ds, indices: list[int]) -> list[dict[str, Any]]:
    batch = ds[indices]  # columnar: {column: [values]}
    return [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def _due(step: int, every: int | None, steps_per_epoch: int, total: int) -> bool:
    if step == total:
        return True
    return step % every == 0 if every else step % steps_per_epoch == 0


def _evaluate(job: Job, accelerator, objective, state, out: Path, report: Reporter, step: int) -> None:
    """Evaluate on the main process; keep the best model (by ``job.metric_for_best``) in ``OUTPUT/best``."""
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(objective).model
        model.eval()
        metrics = job.evaluate(model)
        model.train()
        report.eval(step, metrics)
        value = metrics.get(job.metric_for_best)
        if value is None:
            raise UserError(
                f"training.metric_for_best={job.metric_for_best!r} is not an evaluation metric; valid: {', '.join(metrics)}"
            )
        best = state["best_metric"]
        if best is None or (value > best if job.greater_is_better else value < best):
            state["best_metric"], state["best_step"] = value, step
            _save_model(model, job.tokenizer, out / "best")
    flags = [state["best_metric"], state["best_step"]]
    from accelerate.utils import broadcast_object_list

    state["best_metric"], state["best_step"] = broadcast_object_list(flags)
    accelerator.wait_for_everyone()


def _save_model(model, tokenizer, directory: Path) -> None:
    """Save model + tokenizer into ``directory`` atomically (written aside, then renamed into place)."""
    import shutil

    tmp = directory.with_name(f".tmp-{directory.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.replace(directory)


def _finish(job: Job, accelerator, objective, state, out: Path, report: Reporter) -> dict[str, Any]:
    """Write the final (or best) model into the output directory itself, then the job's own closing work."""
    rows: dict[str, Any] = {}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(objective).model
        if state["best_step"] is not None and (out / "best").is_dir():
            trainstate.load_weights(model, out / "best")
            rows[f"best {job.metric_for_best}"] = f"{state['best_metric']:.4f} (step {state['best_step']})"
        model.eval()
        _save_model(model, job.tokenizer, out / "model.tmp")
        for f in (out / "model.tmp").iterdir():
            f.replace(out / f.name)
        (out / "model.tmp").rmdir()
        if job.finish:
            rows.update(job.finish(model))
    accelerator.wait_for_everyone()
    return rows


def _write_recipe(out: Path, recipe) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
