"""`longattn evaluate`: finetune's metrics for a fine-tuned model on new data, equal to finetune's own final
evaluation on the same data; the added metrics by hand; one-line errors."""

import json

import pytest
import torch
from helpers import run_cli
from test_finetune import datasets_dir, recipe, roberta_dir  # noqa: F401  (fixtures)

from longattn_cli.training import metrics as M
from longattn_cli.training.finetune import run

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {
    "single": (),
    "multi": ("data.label_column=labels",),
    "regress": ("data.text_pair_column=other",),
    "token": ("model.task=token-classification", "data.text_column=words", "data.label_column=tags"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, roberta_dir, datasets_dir):
    """One fine-tuned model per task (its test split scored by finetune into results.json)."""
    out = {}
    for task, extra in TASKS.items():
        d = tmp_path_factory.mktemp(task) / "run"
        assert run(recipe(d, roberta_dir, datasets_dir, task, *extra)) == 0
        out[task] = d
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_evaluate_gives_exactly_finetunes_final_evaluation(task, trained, datasets_dir, capsys):
    out = trained[task]
    test_file = datasets_dir / f"{task}-test.jsonl"
    code, stdout, err = run_cli(["evaluate", str(out), "--data", str(test_file), "--json"], capsys)
    assert code == 0, err
    got = json.loads(stdout)
    want = json.loads((out / "results.json").read_text())
    assert got["examples"] == 20
    assert {k: v for k, v in got.items() if k not in ("model", "data", "split", "examples")} == {
        k: v for k, v in want.items() if k != "split"
    }
    if task == "single":
        assert {"precision code", "recall prose", "f1 code", "majority_accuracy"} <= set(got)
    if task == "regress":
        assert got["pearson"] is None or -1 <= got["pearson"] <= 1
    code, stdout, _ = run_cli(["evaluate", str(out), "--data", str(test_file)], capsys)
    assert code == 0 and "loss" in stdout and all(len(line) <= 80 for line in stdout.splitlines())


@pytest.mark.slow
def test_two_processes_evaluate_their_shares_with_one_process_results(trained, datasets_dir, tmp_path):
    """Under accelerate launch (gloo, two CPU processes) the batches are shared and the figures are the same."""
    import os
    import subprocess
    import sys

    out, test_file = trained["single"], datasets_dir / "single-test.jsonl"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "longattn_cmd", "evaluate", str(out), "--data", str(test_file), "--json",
    ]  # fmt: skip
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout[done.stdout.index("{") :])
    want = json.loads((out / "results.json").read_text())
    assert got["accuracy"] == want["accuracy"] and got["loss"] == pytest.approx(want["loss"], rel=1e-6)


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--data", "MISSING"], r"--data='MISSING' is not a local file"),
        (["data.text_column=nope"], r"no column 'nope'|column 'nope'"),
        (["training.max_steps=3"], r"training.max_steps=3: only data\.\* keys apply here"),
        (["--batch-size", "0"], r"--batch-size must be at least 1, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, pattern, trained, datasets_dir, capsys):
    import re

    data = ["--data", str(datasets_dir / "single-test.jsonl")]
    argv = ["evaluate", str(trained["single"]), *args]
    if "--data" not in args:
        argv += data
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and re.search(pattern, err), err


def test_a_model_without_a_task_head_and_unknown_labels_are_one_line(
    trained,
    roberta_dir,
    datasets_dir,
    tmp_path,
    capsys,
):
    data = ["--data", str(datasets_dir / "single-test.jsonl")]
    code, _, err = run_cli(["evaluate", str(roberta_dir), *data], capsys)
    assert code == 2 and "is a masked-lm model; evaluate and predict need a fine-tuned one" in err, err
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "a b c", "label": "poetry"}) + "\n")
    code, _, err = run_cli(["evaluate", str(trained["single"]), "--data", str(other)], capsys)
    assert (
        code == 2
        and "label(s) poetry in column 'label' are not the model's; the model knows code, prose" in err
    )
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(json.dumps({"text": "a b c"}) + "\n")
    code, _, err = run_cli(["evaluate", str(trained["single"]), "--data", str(unlabelled)], capsys)
    assert code == 2 and "has no label column 'label'" in err, err


def test_added_metrics_by_hand():
    pred, gold = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0])
    got = M.per_class(pred, gold, ["a", "b", "c"])
    assert got["precision a"] == 0.5 and got["recall a"] == 0.5 and got["f1 a"] == 0.5
    assert got["precision b"] == 1.0 and got["recall b"] == 0.5 and got["f1 b"] == pytest.approx(2 / 3)
    assert got["precision c"] == 0.5 and got["recall c"] == 1.0
    x, y = torch.tensor([1.0, 2.0, 3.0, 5.0]).double(), torch.tensor([2.0, 4.0, 5.0, 11.0]).double()
    assert M.pearson(x, y) == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), abs=1e-12)
    assert M.pearson(x, torch.ones(4)) is None
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC", "I-PER"]
    assert M.entities(tags) == {(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 6, "LOC"), (6, 7, "PER")}
    gold_tags = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred_tags = [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG"]]  # PER cut short: 2 of 3 right, 2 of 3 found
    assert M.entity_f1(pred_tags, gold_tags) == pytest.approx(2 / 3)
