"""The training loop shared by ``longattn pretrain`` and ``longattn finetune``, on accelerate.

A command describes its work as a :class:`Job` (model, objective, data, collator, evaluation); this loop does
the rest the same way for both: data parallel or sharded (FSDP2) through accelerate (plain ``longattn`` is one
process, ``accelerate launch -m longattn_cmd`` is many), gradient accumulation, clipping, warm-up and schedule, mixed
precision, checkpoints that resume bit-exactly, SIGINT/SIGTERM handling and NaN detection.

The data order is a function of the step alone (a seeded permutation per epoch, batch ``i`` of process ``r``
taking its slice of it), and masking is seeded per batch, so "where the data was" is just the step number:
a resumed run needs no iterator state to continue exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longattn_cli.devices import is_out_of_memory, peak_memory_mb
from longattn_cli.errors import UserError
from longattn_cli.training import trainstate
from longattn_cli.training.accelerator import make_accelerator
from longattn_cli.training.config import to_dict
from longattn_cli.training.progress import Reporter
from longattn_cli.training.sampling import Order, StreamOrder
from longattn_cli.training.signals import Stop


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
        evaluate: ``model -> metrics``, run on every process (each evaluates its share, see
            :func:`~longattn_cli.training.sampling.sharded`; all return the same metrics); ``None`` when there
            is no validation data.
        metric_for_best: which metric picks the best checkpoint; ``greater_is_better`` says which way.
        finish: ``model -> summary rows`` after training (e.g. writes predictions), run on every process;
            only the main process writes files.
        lengths: tokens per training example, to batch similar lengths together (``None``: no grouping).
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
    lengths: list[int] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


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
        recipe: a :class:`~longattn_cli.training.config.PretrainRecipe` or :class:`~longattn_cli.training.config.FinetuneRecipe`.
        build: ``(recipe, accelerator) -> Job``.
        on_step: called as ``on_step(step, model)`` after every optimizer step (for tests and extensions).

    Returns:
        The exit code: 0 when done, 130/143 when SIGINT/SIGTERM stopped the run after saving a checkpoint.

    Raises:
        UserError: bad input, a checkpoint from a different run, or a NaN/inf loss (the message names the step).
    """
    import datasets
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # our own progress bar and notes say what happens
    hf_logging.disable_progress_bar()
    cfg = recipe.training
    accelerator = make_accelerator(cfg.mixed_precision)
    set_seed(cfg.seed)  # identical initial weights on every process
    resume = _check_resume(recipe, accelerator.num_processes) if cfg.resume else None
    if not cfg.resume:
        trainstate.clear_previous_run(Path(cfg.output_dir), cfg.overwrite, delete=accelerator.is_main_process)
        accelerator.wait_for_everyone()
    with accelerator.main_process_first():  # the main process builds caches; the others then reuse them
        job = build(recipe, accelerator)
    run = _Run(recipe, job, accelerator, resume)
    return run.train(on_step)


def _check_resume(recipe, world: int) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from; a different recipe fails here, before any data is read."""
    where = trainstate.find(Path(recipe.training.output_dir), recipe.training.resume)
    saved = trainstate.read_state(where)
    old = saved["signature"]
    now = trainstate.signature(to_dict(recipe), old["tokenizer_hash"], old["data_fingerprint"], world)
    trainstate.check_signature(old, now, where)
    return where, saved


class _Run:
    """One training run: optimizer, schedule, data order, state, and the loop over steps."""

    def __init__(self, recipe, job: Job, accelerator, resume: tuple[Path, dict[str, Any]] | None):
        from transformers import get_scheduler

        cfg = self.cfg = recipe.training
        self.job, self.accelerator, self.recipe = job, accelerator, recipe
        self.out = Path(cfg.output_dir)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        micro = cfg.batch_size * self.world * cfg.gradient_accumulation_steps
        self.batch, self.accumulation = cfg.batch_size, cfg.gradient_accumulation_steps
        if job.stream_length is None:
            order = self._order()
            self.steps_per_epoch = order.steps_per_epoch
        else:
            self.steps_per_epoch = max(1, job.stream_length // micro)
        self.total = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        optimizer = torch.optim.AdamW(param_groups(job.model, cfg.weight_decay), lr=cfg.learning_rate)
        self.scheduler = get_scheduler(
            cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=self.total
        )
        self.signature = trainstate.signature(
            to_dict(recipe), job.fingerprint["tokenizer"], job.fingerprint["data"], self.world
        )
        self.state = _fresh_state()
        self.resumed_from = None
        # FSDP2: the model is sharded in place by prepare(); its checkpoints hold the shards (every process
        # writes its own), and evaluation and the saved models use an unsharded copy (see _plain).
        self.sharded = bool(getattr(accelerator, "is_fsdp2", False))
        self.model_class, self._copy, self._copy_step = type(job.model), None, None
        _check_auto_batch_size(cfg, self.world, job)
        rng = self._restore(resume, optimizer) if resume else None
        if self.state["micro_batch"]:  # the split an earlier out-of-memory forced, kept across resumes
            self.batch, self.accumulation = self.state["micro_batch"]
            order = self._order()
        if self.sharded:
            _expose_to_fsdp2(job)
        if cfg.compile:
            from longattn_cli.models.compiled import compile_layers, reset_graph_breaks

            reset_graph_breaks()
            compile_layers(job.model)
        self.objective, self.optimizer = accelerator.prepare(job.objective, optimizer)
        if resume:
            if self.sharded:
                self._load_shards(resume[0])
            changed = trainstate.extension(resume[1]["signature"], self.signature)
            if changed:
                self._extend(resume[1], changed, optimizer)
        if job.stream_length is not None:
            order = StreamOrder(
                job.train, job.stream_length, cfg.batch_size, self.world, self.rank,
                cfg.gradient_accumulation_steps, self.state["step"],
            )  # fmt: skip
        self.order = order
        if rng is not None:
            trainstate.set_rng_state(rng)  # last: everything above may have drawn random numbers
        else:
            torch.manual_seed(
                cfg.seed * 1_000_003 + self.rank
            )  # dropout differs across processes, as it should
        self.params = [p for p in job.model.parameters() if p.requires_grad]
        self.last_checkpoint = (trainstate.list_checkpoints(self.out / "checkpoints")[-1:] or [None])[0]

    def _order(self) -> Order:
        c = self.cfg
        return Order(
            len(self.job.train),
            self.batch,
            self.world,
            self.rank,
            self.accumulation,
            c.seed,
            self.job.lengths,
        )

    def _restore(self, resume: tuple[Path, dict[str, Any]], optimizer) -> dict[str, Any]:
        """Weights, optimizer, schedule and step from a checkpoint; returns this process's random state."""
        where, saved = resume
        trainstate.check_signature(saved["signature"], self.signature, where)  # now with tokenizer and data
        has_shards = (where / trainstate.SHARDED).is_dir()
        if has_shards != self.sharded:
            raise UserError(
                f"{where} was written by a {'sharded (FSDP)' if has_shards else 'data parallel'} run; resume "
                f"it with the same kind of launch ({'--use_fsdp --fsdp_version 2' if has_shards else 'no --use_fsdp'})"
            )
        if not self.sharded:  # FSDP loads its shards after prepare()
            trainstate.load_weights(self.job.model, where)
        rng = trainstate.load_training_state(
            where, None if self.sharded else optimizer, self.scheduler, self.rank
        )
        self.state.update({k: saved.get(k, self.state[k]) for k in self.state})
        self.resumed_from = where
        return rng

    def _load_shards(self, where: Path) -> None:
        """FSDP: every process reads its shards of the model and the optimizer (accelerate's sharded loading)."""
        from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

        plugin, acc = self.accelerator.state.fsdp_plugin, self.accelerator
        load_fsdp_model(plugin, acc, self.objective, where / trainstate.SHARDED)
        load_fsdp_optimizer(plugin, acc, self.optimizer, self.objective, where / trainstate.SHARDED)

    def model(self):
        """The model to evaluate and save: the trained one, or under FSDP an unsharded copy of its weights."""
        if not self.sharded:
            return self.accelerator.unwrap_model(self.objective).model
        return self._plain()

    def _plain(self):
        """Every process gathers the full weights (a collective: all call it) into one plain copy of the model,
        once per step (an evaluation and a checkpoint at the same step share it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self._copy_step == self.state["step"]:
            return self._copy
        full = get_model_state_dict(self.objective, options=StateDictOptions(full_state_dict=True))
        full = {k.removeprefix("model."): v for k, v in full.items()}
        if self._copy is None:  # its random initialisation must not move the training's random streams
            rng = trainstate.rng_state()
            self._copy = self.model_class(self.job.model.config).to(self.accelerator.device)
            trainstate.set_rng_state(rng)
        trainstate.load_state(self._copy, full, "the gathered FSDP weights")
        self._copy_step = self.state["step"]
        return self._copy

    def _extend(self, saved: dict[str, Any], changed: dict[str, list], optimizer) -> None:
        """Continue a run past the end it was planned for: the schedule is the one a run planned for the new
        total would follow from this step on (its learning rate is set for the next step now)."""
        step = self.state["step"]
        what = ", ".join(f"{k}={new!r} (was {old!r})" for k, (old, new) in changed.items())
        if self.total <= step:
            raise UserError(
                f"cannot resume from {self.resumed_from} with {what}: the checkpoint is at step {step} and the "
                f"run would end at step {self.total}; to train longer, set training.max_steps above {step}"
            )
        sched = self.scheduler
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = lrs
        record = {"at_step": step, "total_steps": [saved.get("total_steps"), self.total], "changed": changed}
        self.state["extensions"] = [*self.state["extensions"], record]
        self.job.notes.append(
            f"extending the run from step {step}: {what}; {self.cfg.scheduler} schedule now ends at step "
            f"{self.total} (learning rate {lrs[0]:.3g} next)"
        )

    def train(self, on_step) -> int:
        cfg, job, state = self.cfg, self.job, self.state
        main = self.accelerator.is_main_process
        if main:
            _write_recipe(self.out, self.recipe)
        start, began = state["step"], time.perf_counter()
        with Stop() as stop, Reporter(main, self.out, self.total, state["step"], cfg.log_every) as report:
            for note in job.notes + (
                [f"resumed from {self.resumed_from} at step {start}"] if self.resumed_from else []
            ):
                report.note(note)
            self.objective.train()
            while state["step"] < self.total:
                loss, lr, tokens, grad_norm, stopping, padding = self._step(stop)
                step = state["step"]
                report.step(step, loss, lr, tokens, grad_norm, step / self.steps_per_epoch, padding)
                if cfg.compile and step == start + 1:
                    from longattn_cli.models.compiled import describe_breaks, graph_breaks

                    report.note(f"torch.compile: {describe_breaks(graph_breaks())}")
                if on_step:
                    on_step(step, job.model)
                if job.evaluate and _due(step, cfg.eval_every, self.steps_per_epoch, self.total):
                    _evaluate(job, self.accelerator, self.model(), state, self.out, report, step)
                if stopping or step == self.total or (cfg.save_every and step % cfg.save_every == 0):
                    self.last_checkpoint = self._save()
                if stopping:
                    name = signal.Signals(stop.signal).name if stop.signal else "a signal on another process"
                    report.note(
                        f"stopped by {name} at step {step}; checkpoint saved to {self.last_checkpoint}; "
                        "continue with --resume latest"
                    )
                    return 128 + (stop.signal or signal.SIGTERM)
            model = self.model()
            self._copy_step = None  # _finish may load the best weights into the copy
            rows = _finish(job, self.accelerator, model, state, self.out)
        elapsed = time.perf_counter() - began
        if main:
            _write_summary(self.out, job, state, self.world, elapsed, report, rows)
        report.summary(
            {
                "steps": f"{start} → {state['step']}",
                "processes": self.world,
                "tokens": state["tokens"],
                "time (s)": round(elapsed, 1),
                "tokens/s": report.tokens_per_second,
                "final loss": report.last.get("loss", float("nan")),
                **rows,
                "model": str(self.out),
                "last checkpoint": str(self.last_checkpoint),
            }
        )
        return 0

    def _step(self, stop: Stop) -> tuple[float, float, int, float | None, bool, float]:
        """One optimizer step; with ``training.auto_batch_size`` an out-of-memory error splits the micro-batches
        (half the examples, twice as many: the same examples per step) and retries the step from the same
        random state, so the run continues as one configured with the smaller batch from the start would."""
        if not self.cfg.auto_batch_size:
            return self._one_step(stop)
        rng = trainstate.rng_state()
        while True:
            try:
                return self._one_step(stop)
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or self.batch == 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                del exc
                _free_memory()
                factor = next(f for f in range(2, self.batch + 1) if self.batch % f == 0)
                was = self.batch
                self.batch, self.accumulation = self.batch // factor, self.accumulation * factor
                self.state["micro_batch"] = [self.batch, self.accumulation]
                self.order = self._order()
                trainstate.set_rng_state(rng)
                if self.accelerator.is_main_process:
                    from rich.console import Console

                    Console(stderr=True).print(
                        f"out of memory at step {self.state['step'] + 1} with micro-batches of {was}: "
                        f"retrying with {self.batch} x {self.accumulation} accumulated (training.auto_batch_size)"
                    )

    def _one_step(self, stop: Stop) -> tuple[float, float, int, float | None, bool, float]:
        """One optimizer step over the accumulated micro-batches: (mean loss, its lr, tokens, grad norm, stop?,
        share of the token slots that were padding)."""
        cfg, job, accelerator = self.cfg, self.job, self.accelerator
        step, accumulation = self.state["step"], self.accumulation
        loss_sum, tokens, slots = 0.0, 0, 0
        for micro in range(accumulation):
            examples = self.order.examples(job.train, step, micro)
            batch = {
                k: v.to(accelerator.device)
                for k, v in job.collate(examples, self.order.key(step, micro)).items()
            }
            # Gradients are averaged across processes only on the last micro-batch.
            with (
                contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(self.objective)
            ):
                loss = self.objective(**batch)
                accelerator.backward(loss / accumulation)
            loss_sum += loss.item()
            tokens += job.tokens(batch)
            slots += batch["input_ids"].numel() if "input_ids" in batch else 0
        grad_norm = accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm) if cfg.max_grad_norm else None
        # One all-reduce carries the loss, the token count and whether any process was signalled to stop.
        stats = torch.tensor(
            [loss_sum / accumulation, tokens, float(stop.signal is not None), slots],
            device=accelerator.device,
            dtype=torch.float64,
        )
        loss, tokens, stopping, slots = accelerator.reduce(stats, "sum").tolist()
        loss /= self.world
        if not math.isfinite(loss):
            kept = (
                f"the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint
                else "no checkpoint was written yet"
            )
            raise UserError(
                f"loss is {loss} at step {step + 1}; training stopped and {kept} "
                "(lower training.learning_rate or check the data)",
                everywhere=True,
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] = step + 1
        self.state["tokens"] += int(tokens)
        padding = 1 - tokens / slots if slots else 0.0
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        return loss, lr, int(tokens), None if grad_norm is None else float(grad_norm), stopping > 0, padding

    def _save(self) -> Path:
        """A checkpoint of the current step; every process hands its random state to the main one."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        where = trainstate.checkpoint_dir(self.out, self.state["step"])
        rngs = gather_object([trainstate.rng_state()])
        if self.sharded:  # every process writes its shards into the staging directory, renamed when complete
            from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

            if acc.is_main_process:
                trainstate.begin(where)
            acc.wait_for_everyone()
            shards, plugin = trainstate.staging(where) / trainstate.SHARDED, acc.state.fsdp_plugin
            save_fsdp_model(plugin, acc, self.objective, shards)
            save_fsdp_optimizer(plugin, acc, self.optimizer, self.objective, shards)
        model = self.model()
        if acc.is_main_process:
            record = dict(self.state, signature=self.signature, total_steps=self.total)
            trainstate.save(
                where,
                model,
                self.job.tokenizer,
                None if self.sharded else self.optimizer.optimizer,
                self.scheduler,
                rngs,
                record,
                self.cfg.keep_last,
                staged=self.sharded,
            )
        acc.wait_for_everyone()
        return where


def _fresh_state() -> dict[str, Any]:
    """What a run's ``trainer_state.json`` records, at step 0."""
    return {
        "step": 0,
        "tokens": 0,
        "best_metric": None,
        "best_step": None,
        "extensions": [],  # every resume that moved the end of the run: {"at_step", "total_steps", "changed"}
        "micro_batch": None,  # [batch, accumulation] once training.auto_batch_size has split the batches
    }


def _check_auto_batch_size(cfg, world: int, job: Job) -> None:
    if cfg.auto_batch_size and (world > 1 or job.stream_length is not None):
        raise UserError(
            "training.auto_batch_size runs in one process on a map-style dataset; with several processes "
            "or a streamed corpus set training.batch_size and gradient_accumulation_steps yourself"
        )


def _expose_to_fsdp2(job: Job) -> None:
    """What accelerate reads from the root it shards: the layer classes for its transformer wrap policy, and
    tie_weights(), which it calls after moving the model to the meta device and back (without it the MLM
    decoder would come back untied from the word embeddings and train as its own matrix)."""
    job.objective._no_split_modules = getattr(job.model, "_no_split_modules", None)
    job.objective.tie_weights = job.model.tie_weights


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _due(step: int, every: int | None, steps_per_epoch: int, total: int) -> bool:
    if step == total:
        return True
    return step % every == 0 if every else step % steps_per_epoch == 0


def _evaluate(job: Job, accelerator, model, state, out: Path, report: Reporter, step: int) -> None:
    """Evaluate on every process (each its share); keep the best model (by ``job.metric_for_best``) in
    ``OUTPUT/best``, written by the main process."""
    model.eval()
    metrics = job.evaluate(model)
    model.train()
    value = metrics.get(job.metric_for_best)
    if value is None:
        raise UserError(
            f"training.metric_for_best={job.metric_for_best!r} is not an evaluation metric; valid: {', '.join(metrics)}"
        )
    best = state["best_metric"]
    improved = best is None or (value > best if job.greater_is_better else value < best)
    if improved:  # every process has the same metrics, so the same choice
        state["best_metric"], state["best_step"] = value, step
    if accelerator.is_main_process:
        report.eval(step, metrics)
        if improved:
            _save_model(model, job.tokenizer, out / "best")
    accelerator.wait_for_everyone()


def _save_model(model, tokenizer, directory: Path) -> None:
    """Save model + tokenizer into ``directory`` atomically (written aside, then renamed into place)."""
    import shutil

    tmp = trainstate.begin(directory)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.replace(directory)


def _finish(job: Job, accelerator, model, state, out: Path) -> dict[str, Any]:
    """Write the final (or best) model into the output directory itself, then the job's own closing work
    (on every process: its predictions are sharded too)."""
    rows: dict[str, Any] = {}
    if state["best_step"] is not None and (out / "best").is_dir():
        trainstate.load_weights(model, out / "best")
        rows[f"best {job.metric_for_best}"] = f"{state['best_metric']:.4f} (step {state['best_step']})"
    model.eval()
    if accelerator.is_main_process:
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


def _write_summary(
    out: Path, job, state: dict, world: int, elapsed: float, report, rows: dict[str, Any]
) -> None:
    """``OUTPUT/summary.json``: the run's figures for machines (``longattn lra report`` reads it)."""
    import json

    device = next(job.model.parameters()).device
    config = job.model.config
    summary = {
        # A foreign encoder (Longformer, BigBird, ModernBERT) is named by its family, with its own attention.
        "family": "longattn" if config.model_type == "longattn" else config.model_type,
        "attention": getattr(config, "attention", None) or config.model_type,
        "attention_settings": getattr(config, "attention_settings", None) or {},
        "steps": state["step"],
        "processes": world,
        "tokens": state["tokens"],
        "train_time_s": round(elapsed, 3),
        "tokens_per_s": report.tokens_per_second,
        "final_loss": getattr(report, "last", {}).get("loss"),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": str(device),
        "results": {k: v for k, v in rows.items() if isinstance(v, (int, float, str))},
    }
    results = Path(out) / "results.json"
    if results.is_file():
        summary["test_metrics"] = json.loads(results.read_text())
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
