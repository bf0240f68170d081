"""`longattn embed`: one vector per document, equal to sentence-transformers' on the same folder (1e-5), the
same whatever the batching, in .npy and Parquet; a converted sentence-transformers model keeps its pooling."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import run_cli

from longattn_cli.models.modeling import LongAttnForMaskedLM
from longattn_cli.testing import python_docs_text, save_perturbed, tiny_config, tiny_reference

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [t[: 40 + 17 * i] for i, t in enumerate(python_docs_text()[:24])]  # lengths that differ


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def _model(tmp_path, bpe_dir, attention):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(bpe_dir))
    config = tiny_config(attention, block=16, vocab_size=vocab, max_position_embeddings=258)
    torch.manual_seed(0)
    save_perturbed(LongAttnForMaskedLM(config).eval(), tmp_path / attention, bpe_dir)
    return tmp_path / attention


def _encode(folder):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(str(folder), device="cpu").encode(TEXTS, batch_size=5)


@pytest.mark.parametrize("attention", ["lsg", "nystrom"])
def test_vectors_equal_sentence_transformers_on_the_same_folder(attention, tmp_path, bpe_dir, docs, capsys):
    model = _model(tmp_path, bpe_dir, attention)
    for extra in ([], ["--pooling", "cls"], ["--pooling", "max", "--normalize"]):
        out = tmp_path / f"v{len(extra)}.npy"
        argv = [
            "embed",
            str(model),
            "--data",
            str(docs),
            "--out",
            str(out),
            "--sentence-transformers",
            *extra,
        ]
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        ours = np.load(out)
        assert ours.shape == (len(TEXTS), 32) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, _encode(model), atol=1e-5, rtol=0)
        if "--normalize" in extra:
            np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_the_vectors_and_parquet_holds_the_same(tmp_path, bpe_dir, docs, capsys):
    model = _model(tmp_path, bpe_dir, "softmax")
    one, many, table = tmp_path / "one.npy", tmp_path / "many.npy", tmp_path / "v.parquet"
    for out, size in ((one, "1"), (many, "7"), (table, "7")):
        code, _, err = run_cli(
            ["embed", str(model), "--data", str(docs), "--out", str(out), "--batch-size", size], capsys
        )
        assert code == 0, err
    np.testing.assert_allclose(np.load(one), np.load(many), atol=1e-5, rtol=0)
    import pyarrow.parquet as pq

    rows = pq.read_table(table).column("embedding").to_pylist()
    np.testing.assert_allclose(np.array(rows, dtype=np.float32), np.load(many), atol=0, rtol=0)
    # Mean pooling by hand on one document: the encoder's hidden states over its real tokens.
    from transformers import AutoModel, AutoTokenizer

    encoder, tok = AutoModel.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model)
    with torch.no_grad():
        hidden = encoder(**tok(TEXTS[3], return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(np.load(one)[3], hidden.mean(0).numpy(), atol=1e-5, rtol=0)


def test_converting_a_sentence_transformers_model_keeps_its_pooling(tmp_path, bpe_dir, capsys):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    source = tmp_path / "st-roberta"
    tiny_reference("roberta", source, "Model", tokenizer_dir=bpe_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        word = Transformer(str(source))
        SentenceTransformer(modules=[word, Pooling(32, pooling_mode="cls"), Normalize()], device="cpu").save(
            str(source)
        )
    out = tmp_path / "long"
    argv = ["convert", str(source), "--max-length", "256", "--out", str(out), "--block-size", "16",
            "--sparse-block-size", "16"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (out / "modules.json").is_file() and not list(tmp_path.glob(".long.partial-*"))
    vectors = tmp_path / "v.npy"
    argv = [
        "embed",
        str(out),
        "--data",
        str(_docs(tmp_path)),
        "--out",
        str(vectors),
        "--pooling",
        "cls",
        "--normalize",
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(vectors), _encode(out), atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = SentenceTransformer(str(out), device="cpu")
    assert converted.max_seq_length == 256 and type(converted[-1]).__name__ == "Normalize"


def _docs(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--out", "v.txt"], r"the file's extension says the format; use \.npy or \.parquet"),
        (["--out", "EXISTS"], r"exists; pass --overwrite to replace it"),
        (["--out", "v.npy", "--pooling", "median"], r"--pooling 'median': valid: mean, cls, max"),
        (["--out", "v.npy", "data.text_column=body"], r"column 'body'"),
        (["--out", "nowhere/v.npy"], r"folder .* does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(extra, pattern, tmp_path, bpe_dir, docs, capsys, monkeypatch):
    model = _model(tmp_path, bpe_dir, "softmax")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXISTS").write_text("")
    extra = [str(tmp_path / "EXISTS.npy") if x == "EXISTS" else x for x in extra]
    (tmp_path / "EXISTS.npy").write_text("")
    code, _, err = run_cli(["embed", str(model), "--data", str(docs), *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and re.search(pattern, err), err
    assert not (tmp_path / "v.npy").exists()


def test_nothing_to_do_is_one_line(tmp_path, bpe_dir, capsys):
    code, _, err = run_cli(["embed", str(tmp_path)], capsys)
    assert code == 2 and "give --data and --out to embed documents, or --sentence-transformers" in err
