"""`longattn fill-mask`: same tokens and scores as transformers' pipeline on the reference model."""

import json

import pytest
from helpers import run_cli as run
from transformers import pipeline

from longattn_cli.fill_mask import predict
from longattn_cli.testing import tiny_reference


def assert_same(ours, theirs):
    assert [p["token"] for p in ours] == [p["token"] for p in theirs]
    assert [p["token_str"] for p in ours] == [p["token_str"] for p in theirs]
    assert [p["score"] for p in ours] == pytest.approx([p["score"] for p in theirs], rel=1e-5, abs=1e-7)


@pytest.mark.smoke
@pytest.mark.parametrize("which,mask", [("roberta", "<mask>"), ("bert", "[MASK]")])
def test_predictions_equal_reference_pipeline(which, mask, roberta_dir, bert_dir):
    path = roberta_dir if which == "roberta" else bert_dir
    texts = [f"Paris is the {mask} of France.", f"The {mask} statement is {mask} in a loop.", f"{mask}"]
    ours = predict(texts, str(path), top_k=4)
    ref = pipeline("fill-mask", model=str(path), device="cpu")
    assert [r["text"] for r in ours] == texts
    assert len(ours[1]["predictions"]) == 2  # two masks, two lists
    for item in ours:
        theirs = ref(item["text"], top_k=4)
        theirs = theirs if isinstance(theirs[0], list) else [theirs]
        assert len(item["predictions"]) == len(theirs)
        for k, (a, b) in enumerate(zip(item["predictions"], theirs, strict=True)):
            assert len(a) == 4
            assert_same(a, b)
            # The sequence: the text as typed with this mask filled in, the others left, no <s> or </s>.
            for p in a:
                assert p["sequence"].count(mask) == item["text"].count(mask) - 1
                assert not any(t in p["sequence"] for t in ("<s>", "</s>", "[CLS]", "[SEP]"))
                head = item["text"].split(mask)[0].strip()
                assert p["sequence"].startswith(head) and p["token_str"].strip() in p["sequence"], p
            if k == 0 and len(theirs) > 1:
                assert a[0]["sequence"].endswith(" is " + mask + " in a loop."), a[0]["sequence"]
            if len(theirs) == 1 and item["text"] != mask:  # one mask: the pipeline's text, in the case typed
                assert [p["sequence"].lower() for p in a] == [q["sequence"].lower() for q in b]


@pytest.mark.smoke
def test_json_output_has_pipeline_fields(roberta_dir, capsys):
    code, out, err = run(
        ["fill-mask", "A <mask> b.", "<mask> and <mask>", "--model", str(roberta_dir), "-k", "2", "--json"],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    assert len(data) == 2 and len(data[1]["predictions"]) == 2
    assert set(data[0]["predictions"][0][0]) == {"score", "token", "token_str", "sequence"}


def test_table_output(roberta_dir, capsys):
    code, out, err = run(["fill-mask", "A <mask> b.", "--model", str(roberta_dir), "-k", "3"], capsys)
    assert code == 0, err
    assert "score" in out and "sequence" in out


def test_input_at_max_length_works(roberta_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(roberta_dir)
    limit = AutoConfig.from_pretrained(roberta_dir).max_position_embeddings - 2
    words = ["word"] * 400
    while len(tok(" ".join(words) + " <mask>")["input_ids"]) > limit:
        words.pop()
    text = " ".join(words) + " <mask>"
    assert len(tok(text)["input_ids"]) == limit
    assert len(predict([text], str(roberta_dir), top_k=1)[0]["predictions"][0]) == 1


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["no mask here"], "no mask token '<mask>'"),
        (["x <mask>", "-k", "0"], "--top-k must be at least 1"),
        (["x <mask>", "--attention", "bogus"], "unknown attention 'bogus'; valid: .*softmax"),
        (["x <mask>", "--set", "nonsense=1"], "unknown setting.*nonsense.*valid: implementation"),
        (["x <mask>", "--set", "noequals"], "not of the form key=value"),
        (["x <mask>", "-k", "many"], "Invalid value for '--top-k'"),
        (["x <mask>", "--device", "cuda:7"], "CUDA is not available|cuda"),
        (["x " + "word " * 300 + "<mask>"], "tokens long; the model takes at most 128"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, pattern, roberta_dir, capsys):
    import re

    import torch

    if "cuda:7" in args and torch.cuda.is_available():
        pytest.skip("a CUDA machine may have that device")
    code, out, err = run(["fill-mask", *args, "--model", str(roberta_dir)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]


def test_a_tokenizer_larger_than_the_vocabulary_is_one_line(tmp_path, bpe_dir, capsys):
    tiny_reference("roberta", tmp_path, vocab_size=100)  # the 1,000-token tokenizer next to 100 embeddings
    for f in bpe_dir.iterdir():
        if f.name != "config.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    code, _, err = run(["fill-mask", "x <mask>", "--model", str(tmp_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "has 1,000 tokens, the model's vocabulary 100" in err


def test_missing_model_and_offline_hub_id(tmp_path, capsys, monkeypatch):
    code, _, err = run(["fill-mask", "x <mask>", "--model", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run(["fill-mask", "x <mask>", "--model", "roberta-base"], capsys)
    assert code == 2 and "unreachable" in err and len(err.strip().splitlines()) == 1


def test_unsupported_architecture(tmp_path, capsys, bpe_dir):
    import shutil

    shutil.copytree(bpe_dir, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"model_type": "t5"}')
    code, _, err = run(["fill-mask", "x <mask>", "--model", str(tmp_path / "m")], capsys)
    assert code == 2 and "unsupported architecture model_type='t5'" in err


def test_help_lists_only_working_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "fill-mask" in out


@pytest.mark.gpu
def test_fill_mask_on_cuda_matches_cpu(roberta_dir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = predict(["A <mask> b."], str(roberta_dir), top_k=3, device="cpu")
    gpu = predict(["A <mask> b."], str(roberta_dir), top_k=3, device="cuda")
    assert [p["token"] for p in cpu[0]["predictions"][0]] == [p["token"] for p in gpu[0]["predictions"][0]]


def test_ctrl_c_while_starting_is_one_line_and_exit_130(roberta_dir):
    """SIGINT while torch and transformers are still importing: exit 130, one line, no traceback."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "longattn_cmd", "fill-mask", "x <mask>", "--model", str(roberta_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT, and its children inherit that: give the child the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(1.5)  # past the interpreter's start, inside the heavy imports (they take several seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "error: aborted", err
