"""Batches that waste nothing: training steps grouped by length (seeded, a function of the step alone, so
resumable), evaluation batched longest first with its outputs in the original order."""

import json
import random

import pytest
import torch
from test_finetune import datasets_dir, predictions, recipe, roberta_dir  # noqa: F401  (fixtures)

from longattn_cli.training.finetune import run
from longattn_cli.training.sampling import Order, length_grouped

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = [int(random.Random(i).lognormvariate(4, 1)) + 1 for i in range(1000)]  # long-tailed, as documents


def steps(order, size):
    return [order[i : i + size] for i in range(0, len(order) - len(order) % size, size)]


def padding(order, size):
    return sum(size * max(LENGTHS[i] for i in s) - sum(LENGTHS[i] for i in s) for s in steps(order, size))


def test_length_grouping_is_a_seeded_permutation_with_little_padding():
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    grouped = length_grouped(perm, LENGTHS, 8, seed=3)
    assert grouped == length_grouped(perm, LENGTHS, 8, seed=3)  # deterministic under the seed
    assert grouped != length_grouped(perm, LENGTHS, 8, seed=4)  # the steps' order is a seeded draw
    assert sorted(grouped) == list(range(1000))  # every example once
    assert padding(grouped, 8) < 0.15 * padding(perm, 8)  # 0.11 here
    # Each step is a run of similar lengths: its longest at most a few times its shortest, for most steps.
    spread = [max(LENGTHS[i] for i in s) / min(LENGTHS[i] for i in s) for s in steps(grouped, 8)]
    assert sorted(spread)[len(spread) // 2] < 1.2


def test_a_grouped_order_is_a_function_of_the_step():
    """Resuming at any step sees the batches the uninterrupted run would have seen; ranks and micro-batches
    share each step's examples without overlap."""
    kw = dict(batch=4, world=2, accumulation=2, seed=5, lengths=LENGTHS)
    orders = [Order(1000, rank=r, **kw) for r in range(2)]
    seen = []
    for step in range(orders[0].steps_per_epoch):
        for micro in range(2):
            for order in orders:
                seen += order.indices(step, micro)
    assert len(seen) == len(set(seen)) == 1000 - 1000 % 16
    fresh = Order(1000, rank=1, **kw)
    assert fresh.indices(37, 1) == orders[1].indices(37, 1)
    assert fresh.indices(70, 0) == orders[1].indices(70, 0)  # the next epoch, too
    step = [i for r in range(2) for m in range(2) for i in orders[r].indices(12, m)]
    assert max(LENGTHS[i] for i in step) / min(LENGTHS[i] for i in step) < 2


def test_finetuning_groups_by_length_and_writes_predictions_in_order(tmp_path, roberta_dir, datasets_dir):  # noqa: F811
    rows = {}
    for group in ("true", "false"):
        out = tmp_path / group
        assert run(recipe(out, roberta_dir, datasets_dir, "single", f"training.group_by_length={group}")) == 0
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
        rows[group] = sum(x["padding"] for x in lines) / len(lines)
        preds = predictions(out)
        gold = [json.loads(x)["label"] for x in (datasets_dir / "single-test.jsonl").read_text().splitlines()]
        assert [p["index"] for p in preds] == list(range(len(gold)))
        assert [p["label"] for p in preds] == gold  # evaluation sorted by length, outputs in the file's order
    assert rows["true"] < 0.5 * rows["false"], rows


def test_auto_batch_size_splits_on_out_of_memory_and_trains_as_the_smaller_batch(
    tmp_path,
    roberta_dir,  # noqa: F811
    datasets_dir,  # noqa: F811
    monkeypatch,
):
    """A forced out-of-memory error on micro-batches of more than 2 examples (raised after the forward ran, so
    that it has drawn its dropout): the run goes on with 2 x 2 accumulated and ends with the weights of a run
    configured so from the start; a resume keeps the split."""
    from safetensors.torch import load_file

    from longattn_cli.training import finetune

    real = finetune.ClassificationObjective.forward

    def forward(self, **batch):
        out = real(self, **batch)
        if batch["input_ids"].shape[0] > 2:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
            )
        return out

    base = ["training.max_steps=6", "training.save_every=3", "model.dropout=0.1"]
    split = tmp_path / "split"
    assert run(recipe(split, roberta_dir, datasets_dir, "single", *base, "training.batch_size=2",
                      "training.gradient_accumulation_steps=2")) == 0  # fmt: skip
    monkeypatch.setattr(finetune.ClassificationObjective, "forward", forward)
    auto = tmp_path / "auto"
    over = [*base, "training.batch_size=4", "training.auto_batch_size=true"]
    assert run(recipe(auto, roberta_dir, datasets_dir, "single", *over)) == 0
    want = load_file(str(split / "model.safetensors"))
    got = load_file(str(auto / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    state = json.loads((auto / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["micro_batch"] == [2, 2]
    # Resumed from step 3: the split holds from the start (no second out-of-memory needed), same weights.
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(auto / "checkpoints" / "step-0000003", again / "checkpoints" / "step-0000003")
    assert run(recipe(again, roberta_dir, datasets_dir, "single", *over, "training.resume=latest")) == 0
    got = load_file(str(again / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    # Without the key, the same error stops the run (as a plain error, not a retry).
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        run(recipe(tmp_path / "plain", roberta_dir, datasets_dir, "single", *base, "training.batch_size=4"))
