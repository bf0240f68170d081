"""Data parallel through a real `accelerate launch`: two CPU processes on gloo, rank 0 alone writes, and a run
resumed in two processes ends with the same weights as the uninterrupted one."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_PRETRAIN
from safetensors.torch import load_file

from longattn_cli.testing import python_docs_text

ROOT = Path(__file__).resolve().parents[1]
# `--cpu --num_processes 2` silently runs one process; --multi_gpu on a machine without GPUs forms a gloo group.
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "-m",
    "longattn_cli",
    "pretrain",
]


# A tiny model on short blocks: the same for the two-process runs and the one-process check.
TINY = [*TINY_PRETRAIN, "model.dropout=0.1"]


def launch(out, corpus, cache, *extra):
    argv = [
        *LAUNCH,
        *TINY,
        f"data.source={corpus}",
        f"data.cache_dir={cache}",
        f"training.output_dir={out}",
        "training.max_steps=6",
        "training.save_every=3",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_two_processes_train_and_resume_bit_exactly(tmp_path):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n\n".join(python_docs_text()[:300]) + "\n")
    full = tmp_path / "full"
    done = launch(full, corpus, tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"processes\s+│\s+2\s", done.stdout), done.stdout  # the summary table
    assert (
        done.stdout.count("run summary") == 1 and done.stderr.count("blocks of 64 tokens") == 1
    )  # rank 0 reports
    state = json.loads((full / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["signature"]["world_size"] == 2
    assert (
        len(torch.load(full / "checkpoints" / "step-0000003" / "rng.pt", weights_only=True)) == 2
    )  # both ranks' RNG
    lines = (full / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]  # one writer
    assert json.loads(lines[0])["tokens_per_s"] > 0

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000003", resumed / "checkpoints" / "step-0000003")
    again = launch(resumed, corpus, tmp_path / "cache", "training.resume=latest")
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_fails_fast(tmp_path):
    from longattn_cli.cli import main

    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n\n".join(python_docs_text()[:300]) + "\n")
    out = tmp_path / "run"
    assert launch(out, corpus, tmp_path / "cache", "training.max_steps=3").returncode == 0
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "pretrain",
                *TINY,
                f"data.source={corpus}",
                f"data.cache_dir={tmp_path / 'cache'}",
                f"training.output_dir={out}",
                "training.max_steps=3",
                "training.save_every=3",
                "--resume",
                "latest",
            ]
        )
    assert exc.value.code == 2
