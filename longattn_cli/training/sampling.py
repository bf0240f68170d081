"""Which examples each process trains on at each step: a function of the step alone.

A resumed run needs no iterator state: the permutation of epoch ``e`` is seeded by ``(seed, e)``, and micro-batch
``(step, micro)`` of process ``rank`` is a fixed slice of it. A streamed corpus is read in order, each process
taking its slice of every group, and a resumed run skips what the interrupted one consumed.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from longattn_cli.errors import UserError


class Order:
    """Which examples form micro-batch ``(step, micro)`` on process ``rank``: a seeded permutation per epoch,
    with ``lengths`` grouped so that each step's examples have similar lengths (:func:`length_grouped`).

    One step takes ``batch × world × accumulation`` examples; an epoch is the whole steps that fit (a
    remainder smaller than one step is left for the next epoch's shuffle).
    """

    def __init__(self, n: int, batch: int, world: int, rank: int, accumulation: int, seed: int, lengths=None):
        self.n, self.batch, self.world, self.rank = n, batch, world, rank
        self.lengths = lengths  # per example: group similar lengths into steps (see length_grouped)
        self.accumulation, self.seed = accumulation, seed
        self.per_step = batch * world * accumulation
        self.steps_per_epoch = n // self.per_step
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training data has {n} example(s), fewer than one step takes (batch_size {batch} × "
                f"{world} process(es) × gradient_accumulation_steps {accumulation}); lower them or add data"
            )
        self._epoch, self._perm = -1, None

    def examples(self, ds, step: int, micro: int) -> list[dict[str, Any]]:
        """The rows of micro-batch ``(step, micro)`` of this process."""
        rows = ds[self.indices(step, micro)]  # columnar: {column: [values]}
        return [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]

    def indices(self, step: int, micro: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None:
                perm = length_grouped(perm, self.lengths, self.per_step, self.seed * 7919 + epoch + 1)
            self._epoch, self._perm = epoch, perm
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

    def examples(self, ds, step: int, micro: int) -> list[dict[str, Any]]:
        """The next micro-batch of this process (call in step order)."""
        group = list(itertools.islice(self.it, self.batch * self.world))
        return group[self.rank * self.batch : (self.rank + 1) * self.batch]

    def key(self, step: int, micro: int) -> int:
        return (step * self.accumulation + micro) * self.world + self.rank


def length_grouped(perm: list[int], lengths, per_step: int, seed: int, group: int = 32) -> list[int]:
    """``perm`` reordered so that each step's ``per_step`` examples have similar lengths.

    Consecutive runs of ``group`` steps' worth of examples are sorted by length (longest first, ties in
    ``perm`` order), cut into steps, and the steps of a run put in a seeded random order: a batch pads to
    its own longest example, so grouping similar lengths removes most padding while the epoch stays a
    random draw. A pure function of its arguments: resuming at any step needs no state.
    """
    out: list[int] = []
    size = per_step * group
    g = torch.Generator().manual_seed(seed)
    for start in range(0, len(perm), size):
        run = sorted(perm[start : start + size], key=lambda i: -lengths[i])  # stable: ties keep perm order
        steps = [run[i : i + per_step] for i in range(0, len(run), per_step)]
        whole = [s for s in steps if len(s) == per_step]  # a short tail stays last (the epoch drops it)
        for j in torch.randperm(len(whole), generator=g).tolist():
            out.extend(whole[j])
        out.extend(x for s in steps if len(s) < per_step for x in s)
    return out


def longest_first(lengths: list[int], size: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of ``size``, longest first (a batch pads to its longest item, so
    sorting wastes no compute on padding); stable, so equal lengths keep their order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


def sharded(fn, items: list) -> list:
    """``[fn(x) for x in items]``, each process computing every ``world``-th item (round robin) and every
    process receiving all results, in item order. One process: a plain loop. ``fn``'s results travel by
    pickling (``accelerate.utils.gather_object``): keep them small and on the CPU. A collective call: every
    process must make it (not inside ``main_process_first``, where the others wait at a barrier)."""
    from accelerate import PartialState

    state = PartialState()
    rank, world = state.process_index, state.num_processes
    mine = [(i, fn(items[i])) for i in range(rank, len(items), world)]
    if world == 1:
        return [r for _, r in mine]
    from accelerate.utils import gather_object

    results: list = [None] * len(items)
    for i, r in gather_object(mine):
        results[i] = r
    return results
