"""`longattn export --format onnx`: one graph for every batch size and length, equal to torch within 1e-4 at
lengths that are not multiples of any block or landmark size, on padded rows too; what cannot be exported is
refused in one line, and nothing is half-written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from longattn_cli.models import onnx
from longattn_cli.models.modeling import LongAttnForMaskedLM, LongAttnForSequenceClassification
from longattn_cli.testing import tiny_config

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

# 5 and 17 tokens: one LSG block, and Nyström rows at or below their 8 landmarks (exact attention); 157 and
# 250: several blocks, every row beyond the landmarks but the padded ones of 17.
LENGTHS = (5, 17, 157, 250)
MECHANISMS = {
    "softmax": ("softmax", {}),
    "softmax-eager": ("softmax", {"implementation": "eager"}),
    "nystrom-conv": ("nystrom", {"num_landmarks": 8, "conv_kernel_size": 5}),
    "yoso-e-conv": ("yoso", {"use_expectation": True, "conv_window": 5}),
    "lsg-norm": ("lsg", {"sparsity_type": "norm"}),
}
SLOW = {
    f"lsg-{kind}": ("lsg", {"sparsity_type": kind})
    for kind in ("pooling", "bos_pooling", "stride", "block_stride", "none")
}
SLOW["lsg-f4-3-globals-pool"] = (
    "lsg",
    {"sparsity_factor": 4, "num_global_tokens": 3, "pool_with_global": True, "mask_first_token": True},
)


def _save(path: Path, mechanism: str, settings: dict, tokenizer, head=LongAttnForMaskedLM, **fields) -> Path:
    config = tiny_config(
        mechanism,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=300,
        **fields,
    )
    if settings:
        config.set_attention(**settings)
    torch.manual_seed(0)
    model = head(config)
    with torch.no_grad():  # LayerNorms and biases away from 1 and 0: a wrong route cannot hide behind them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(bpe_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_dir)


def _check_export(tmp_path, tokenizer, mechanism, settings):
    model_dir = _save(tmp_path / "model", mechanism, settings, tokenizer)
    report = onnx.export(str(model_dir), tmp_path / "onnx", check=True, lengths=LENGTHS)
    assert [r["length"] for r in report["check"]] == list(LENGTHS)
    assert report["max_abs_diff"] <= 1e-4, report["check"]
    written = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert written["opset"] == 18 and written["outputs"] == {"logits": ["batch", "length", "vocabulary"]}
    assert {p.name for p in (tmp_path / "onnx").iterdir()} >= {"model.onnx", "export.json", "tokenizer.json"}


@pytest.mark.parametrize("name", list(MECHANISMS))
def test_graph_equals_torch_at_every_length_and_padding(name, tmp_path, tokenizer):
    _check_export(tmp_path, tokenizer, *MECHANISMS[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW))
def test_every_deterministic_lsg_sparsity_exports(name, tmp_path, tokenizer):
    _check_export(tmp_path, tokenizer, *SLOW[name])


def test_the_users_lines_in_a_fresh_interpreter(tmp_path, tokenizer):
    """`longattn export DIR --out OUT --check`, then the graph run by onnxruntime alone with the tokenizer
    written beside it, against the same model through transformers' Auto class."""
    model_dir = _save(tmp_path / "clf", "lsg", {}, tokenizer, LongAttnForSequenceClassification, num_labels=3)
    out = tmp_path / "onnx"
    done = subprocess.run(
        [sys.executable, "-m", "longattn_cmd", "export", str(model_dir), "--out", str(out), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "opset 18" in done.stderr and "within 0.0001" in done.stderr
    script = f"""
import numpy, onnxruntime, torch
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
texts = ["a short one", "a longer document about attention, " * 8]
batch = tok(texts, padding=True, return_tensors="np")
session = onnxruntime.InferenceSession({str(out / "model.onnx")!r})
got = session.run(None, {{"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}})[0]
import longattn_cli
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained({str(model_dir)!r}).eval()
with torch.no_grad():
    want = model(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
print(got.shape, float(numpy.abs(got - want).max()))
"""
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    shape, diff = ran.stdout.rsplit(" ", 1)
    assert shape == "(2, 3)" and float(diff) <= 1e-4


@pytest.mark.parametrize(
    "mechanism, settings, says",
    [
        ("yoso", {"use_expectation": False}, "--set use_expectation=true"),
        ("lsg", {"sparsity_type": "lsh"}, "--set sparsity_type=norm"),
    ],
)
def test_random_routes_are_refused_in_one_line(mechanism, settings, says, tmp_path, tokenizer, capsys):
    model_dir = _save(tmp_path / "m", mechanism, settings, tokenizer)
    capsys.readouterr()  # transformers' progress bar of the save
    code, _, err = run_cli(["export", str(model_dir), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing written, no partial folder


def test_bad_output_and_options_get_one_line(tmp_path, tokenizer, capsys):
    model_dir = str(_save(tmp_path / "m", "softmax", {}, tokenizer))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    cases = [
        (["--out", str(tmp_path / "full")], "exists and is not empty; pass --overwrite"),
        (["--out", str(tmp_path / "file")], "is a file"),
        (["--out", "/proc/onnx"], "cannot be written"),
        (["--out", str(tmp_path / "o"), "--format", "tflite"], "valid: onnx"),
        (["--out", str(tmp_path / "o"), "--opset", "13"], "18 or newer"),
        (["--out", str(tmp_path / "o"), "--set", "num_landmarks=8"], "num_landmarks"),
    ]
    for args, says in cases:
        code, _, err = run_cli(["export", model_dir, *args], capsys)
        assert code == 2 and err.count("\n") == 1 and says in err, (args, err)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full", "m"]


def test_a_failed_check_writes_nothing_and_keeps_the_old_folder(tmp_path, tokenizer, monkeypatch, capsys):
    model_dir = str(_save(tmp_path / "m", "softmax", {}, tokenizer))
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    capsys.readouterr()
    monkeypatch.setattr(onnx, "TOLERANCE", -1.0)  # every check now fails
    code, _, err = run_cli(["export", model_dir, "--out", str(out), "--overwrite", "--check"], capsys)
    assert code == 2 and "nothing was written" in err, err
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "o"]
