"""`longattn predict`: every example's label, score and probabilities in input order, the same labels as
finetune's own predictions, in JSONL, CSV and Parquet; --resume after a partial file; Ctrl-C leaves a valid one."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli
from test_evaluate import TASKS, trained  # noqa: F401  (fixtures)
from test_finetune import datasets_dir, roberta_dir  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("task", list(TASKS))
def test_predictions_match_finetunes_and_every_format_holds_them(
    task, trained, datasets_dir, tmp_path, capsys
):
    model, data = trained[task], datasets_dir / f"{task}-test.jsonl"
    rows = {}
    for suffix in (".jsonl", ".csv", ".parquet"):
        out = tmp_path / f"p{suffix}"
        code, _, err = run_cli(["predict", str(model), "--data", str(data), "--out", str(out)], capsys)
        assert code == 0, err
        rows[suffix] = out
    got, theirs = _jsonl(rows[".jsonl"]), _jsonl(model / "predictions.jsonl")
    assert [r["index"] for r in got] == list(range(20))
    for ours, ref in zip(got, theirs, strict=True):
        if task == "single":
            assert ours["label"] == ref["prediction"] and ours["score"] == max(ours["probabilities"].values())
            assert sum(ours["probabilities"].values()) == pytest.approx(1, abs=1e-6)
        elif task == "multi":
            assert sorted(ours["labels"]) == sorted(ref["prediction"])
        elif task == "regress":
            assert ours["prediction"] == pytest.approx(ref["prediction"], rel=1e-6)
        else:
            assert [w and w["label"] for w in ours["words"]] == ref["prediction"]
    with rows[".csv"].open() as f:
        table = list(csv.DictReader(f))
    import pyarrow.parquet as pq

    parquet = pq.read_table(rows[".parquet"]).to_pylist()
    assert len(table) == len(parquet) == 20 and [int(r["index"]) for r in table] == list(range(20))
    if task == "single":
        assert [r["label"] for r in table] == [r["label"] for r in got] == [r["label"] for r in parquet]
        assert float(table[0]["p(code)"]) == pytest.approx(got[0]["probabilities"]["code"])


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_resume_continues_after_the_rows_done(suffix, trained, datasets_dir, tmp_path, capsys):
    model, data = trained["single"], datasets_dir / "single-test.jsonl"
    full, part = tmp_path / f"full{suffix}", tmp_path / f"part{suffix}"
    assert run_cli(["predict", str(model), "--data", str(data), "--out", str(full)], capsys)[0] == 0
    argv = ["predict", str(model), "--data", str(data), "--out", str(part)]
    assert run_cli([*argv, "data.max_examples=7"], capsys)[0] == 0  # as if stopped after 7 rows
    if suffix == ".jsonl":
        with part.open("a") as f:
            f.write('{"index": 7, "lab')  # a line torn by an abrupt end
    code, _, err = run_cli([*argv, "--resume"], capsys)
    assert code == 0, err
    assert part.read_bytes() == full.read_bytes() if suffix != ".parquet" else _same_parquet(part, full)


def _same_parquet(a, b):
    import pyarrow.parquet as pq

    return pq.read_table(a).to_pylist() == pq.read_table(b).to_pylist()


def test_ctrl_c_leaves_a_valid_file_that_resume_completes(trained, tmp_path):
    model = trained["single"]
    data = tmp_path / "many.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"line {i} of the function body"}) + "\n" for i in range(30000))
    )
    out = tmp_path / "p.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "longattn_cmd",
        "predict",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    began = time.monotonic()
    while not (out.exists() and out.stat().st_size):
        assert proc.poll() is None and time.monotonic() - began < 300, (
            proc.stderr.read() if proc.poll() else ""
        )
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "--resume continues" in err, err
    rows = _jsonl(out)  # every line whole
    assert 0 < len(rows) < 30000 and [r["index"] for r in rows] == list(range(len(rows)))
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _jsonl(out)
    assert [r["index"] for r in rows] == list(range(30000))


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--out", "p.txt"], r"use \.jsonl, \.csv or \.parquet"),
        (["--out", "EXISTS"], r"exists; pass --resume to continue it or --overwrite to replace it"),
        (["--out", "p.jsonl", "--resume", "--overwrite"], r"contradict"),
        (["--out", "p.jsonl", "data.text_column=body"], r"column 'body'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(extra, pattern, trained, datasets_dir, tmp_path, capsys):
    exists = tmp_path / "exists.jsonl"
    exists.write_text("")
    extra = [str(exists) if x == "EXISTS" else str(tmp_path / x) if x.startswith("p.") else x for x in extra]
    data = datasets_dir / "single-test.jsonl"
    code, _, err = run_cli(["predict", str(trained["single"]), "--data", str(data), *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and re.search(pattern, err), err
    assert not (tmp_path / "p.jsonl").exists()


def test_a_model_without_a_task_head_is_one_line(roberta_dir, datasets_dir, tmp_path, capsys):
    data = datasets_dir / "single-test.jsonl"
    code, _, err = run_cli(
        ["predict", str(roberta_dir), "--data", str(data), "--out", str(tmp_path / "p.jsonl")], capsys
    )
    assert code == 2 and "is a masked-lm model; evaluate and predict need a fine-tuned one" in err, err


def test_a_torn_last_line_is_cut_reading_only_the_tail(tmp_path):
    from longattn_cli.inference.files import drop_torn_line, rows_done

    path = tmp_path / "p.jsonl"
    for text, kept in (
        ('{"a": 1}\n{"a": 2}\n{"a": 3', '{"a": 1}\n{"a": 2}\n'),  # the torn line spans several 4-byte chunks
        ('{"a": 1}\n', '{"a": 1}\n'),
        ('{"a"', ""),
        ("", ""),
    ):
        path.write_text(text)
        drop_torn_line(path, chunk=4)
        assert path.read_text() == kept and rows_done(path) == kept.count("\n")
