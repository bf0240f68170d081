"""`longattn finetune`: every task from local files, metrics that agree with the written predictions,
best-checkpoint selection, freezing, attention switching and one-line errors."""

import json
import random

import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file

from longattn_cli.errors import UserError
from longattn_cli.models.checkpoints import load_model
from longattn_cli.testing import python_docs_text, tiny_reference
from longattn_cli.training.config import load_recipe, parse_overrides
from longattn_cli.training.finetune import run
from longattn_cli.training.metrics import compute, macro_f1

WORDS = ["loop", "class", "return", "import", "yield", "lambda"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, bpe_dir):
    d = tmp_path_factory.mktemp("roberta")
    tiny_reference("roberta", d, tokenizer_dir=bpe_dir)
    return d


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory):
    """Small splits of every task, made from CPython's docs (label rules the model can pick up)."""
    d = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    texts = [t[:200] for t in python_docs_text()[:120]]
    for split, part in (("train", texts[:80]), ("validation", texts[80:100]), ("test", texts[100:])):
        single = [{"text": t, "label": "code" if any(w in t for w in WORDS) else "prose"} for t in part]
        _write(d / f"single-{split}.jsonl", single)
        multi = [{"text": t, "labels": [w for w in WORDS[:3] if w in t]} for t in part]
        _write(d / f"multi-{split}.jsonl", multi)
        regress = [
            {"text": t, "other": t[::-1], "label": len(t.split()) / 40.0} for t in part
        ]  # a sentence pair
        _write(d / f"regress-{split}.jsonl", regress)
        tokens = []
        for t in part:
            words = t.split()[:30]
            tokens.append(
                {
                    "words": words,
                    "tags": ["KW" if w in WORDS else ("CAP" if w[:1].isupper() else "O") for w in words],
                }
            )
        _write(d / f"token-{split}.jsonl", tokens)
    with (d / "single-train.csv").open("w") as f:
        f.write(
            "text,label\n" + "".join(f'"{t.replace(chr(34), "")}",{rng.randint(0, 2)}\n' for t in texts[:40])
        )
    return d


def recipe(out, roberta_dir, data_dir, task, *extra):
    files = {s: data_dir / f"{task}-{s}.jsonl" for s in ("train", "validation", "test")}
    over = [
        f"model.source={roberta_dir}",
        f"data.source={files['train']}",
        f"data.validation={files['validation']}",
        f"data.test={files['test']}",
        "data.max_length=64",
        f"data.cache_dir={out.parent / 'cache'}",
        f"training.output_dir={out}",
        "training.batch_size=8",
        "training.learning_rate=1e-3",
        "training.max_steps=8",
        "training.eval_every=4",
        *extra,
    ]
    return load_recipe("finetune", None, parse_overrides(over))


def predictions(out):
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.smoke
def test_single_label_metrics_match_the_predictions_file(tmp_path, roberta_dir, datasets_dir):
    out = tmp_path / "run"
    assert run(recipe(out, roberta_dir, datasets_dir, "single")) == 0
    preds, results = predictions(out), json.loads((out / "results.json").read_text())
    assert len(preds) == 20 and {p["prediction"] for p in preds} <= {"code", "prose"}
    accuracy = sum(p["prediction"] == p["label"] for p in preds) / len(preds)
    assert results["accuracy"] == pytest.approx(accuracy)
    config = json.loads((out / "config.json").read_text())
    assert (
        config["id2label"] == {"0": "code", "1": "prose"}
        and config["problem_type"] == "single_label_classification"
    )
    # Evaluation ran during training (every 4 steps) and the best of them is the model kept.
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval_accuracy" in x]
    assert [e["step"] for e in evals] == [4, 8]
    best = max(evals, key=lambda e: e["eval_accuracy"])  # first of the ties, as the loop keeps it
    state = json.loads(
        sorted((out / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text()
    )
    assert state["best_step"] == best["step"]
    ours, kept = load_file(str(out / "model.safetensors")), load_file(str(out / "best" / "model.safetensors"))
    assert all(torch.equal(ours[k], kept[k]) for k in ours)
    # The model directory works with transformers' own pipeline and gives the same labels.
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out), device="cpu")
    texts = [json.loads(x)["text"] for x in (datasets_dir / "single-test.jsonl").read_text().splitlines()]
    assert [r["label"] for r in clf(texts[:5])] == [p["prediction"] for p in preds[:5]]


def test_multi_label_and_regression(tmp_path, roberta_dir, datasets_dir):
    out = tmp_path / "multi"
    assert run(recipe(out, roberta_dir, datasets_dir, "multi", "data.label_column=labels")) == 0
    preds, results = predictions(out), json.loads((out / "results.json").read_text())
    assert set(results) >= {"f1", "accuracy"}
    exact = sum(sorted(p["prediction"]) == sorted(p["label"]) for p in preds) / len(preds)
    assert results["accuracy"] == pytest.approx(exact)
    assert json.loads((out / "config.json").read_text())["problem_type"] == "multi_label_classification"

    out = tmp_path / "regress"
    assert run(recipe(out, roberta_dir, datasets_dir, "regress", "data.text_pair_column=other")) == 0
    preds, results = predictions(out), json.loads((out / "results.json").read_text())
    mse = sum((p["prediction"] - p["label"]) ** 2 for p in preds) / len(preds)
    assert results["mse"] == pytest.approx(mse, rel=1e-5)
    assert len(json.loads((out / "config.json").read_text())["id2label"]) == 1


def test_token_classification_predicts_one_label_per_word(tmp_path, roberta_dir, datasets_dir):
    out = tmp_path / "token"
    r = recipe(
        out,
        roberta_dir,
        datasets_dir,
        "token",
        "model.task=token-classification",
        "data.text_column=words",
        "data.label_column=tags",
    )
    assert run(r) == 0
    preds, results = predictions(out), json.loads((out / "results.json").read_text())
    assert all(len(p["prediction"]) == len(p["label"]) for p in preds)
    cut = [p for p in preds if None in p["prediction"]]  # words past data.max_length have no prediction
    assert cut and all(p["prediction"].index(None) > 5 for p in cut)
    flat = [(a, b) for p in preds for a, b in zip(p["prediction"], p["label"], strict=True) if a is not None]
    assert results["accuracy"] == pytest.approx(sum(a == b for a, b in flat) / len(flat))


def test_train_only_the_head_leaves_the_encoder_untouched(tmp_path, roberta_dir, datasets_dir):
    out = tmp_path / "frozen"
    assert (
        run(
            recipe(
                out,
                roberta_dir,
                datasets_dir,
                "single",
                "model.train_only=[classifier.*]",
                "training.max_steps=3",
            )
        )
        == 0
    )
    source = load_model(str(roberta_dir), head="base").state_dict()
    tuned = load_file(str(out / "model.safetensors"))
    for k, v in source.items():
        assert torch.equal(tuned[f"longattn.{k}"], v), k
    start = load_file(str(out / "checkpoints" / "step-0000003" / "model.safetensors"))
    assert not torch.equal(
        start["classifier.out_proj.weight"], torch.zeros_like(start["classifier.out_proj.weight"])
    )


def test_attention_switch_and_csv_integer_labels(tmp_path, roberta_dir, datasets_dir):
    out = tmp_path / "csv"
    over = [
        f"model.source={roberta_dir}",
        f"data.source={datasets_dir / 'single-train.csv'}",
        "data.max_length=64",
        f"training.output_dir={out}",
        "training.max_steps=2",
        "training.batch_size=4",
        f"data.cache_dir={tmp_path}",
        "model.attention=softmax",
        "model.attention_settings.implementation=eager",
    ]
    assert run(load_recipe("finetune", None, parse_overrides(over))) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["attention_settings"] == {"implementation": "eager"}
    assert config["id2label"] == {"0": "0", "1": "1", "2": "2"}


def test_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 0, 1])
    got = compute("single_label_classification", logits, labels)
    assert got["accuracy"] == 0.75
    assert got["f1"] == pytest.approx((2 * 2 / (2 * 2 + 0 + 1) + 2 * 1 / (2 * 1 + 1 + 0)) / 2)
    assert macro_f1(torch.tensor([1, 1]), torch.tensor([1, 1])) == 1.0
    multi = compute(
        "multi_label_classification",
        torch.tensor([[1.0, -1.0], [1.0, 1.0]]),
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    )
    assert multi == {"accuracy": 0.5, "f1": pytest.approx(2 * 2 / (2 * 2 + 1))}
    assert compute("regression", torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))["mse"] == 2.5
    tokens = compute(
        "token_classification", torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]), torch.tensor([0, -100, 1])
    )
    assert tokens["accuracy"] == 0.5


def cli(argv, capsys):
    code, _, err = run_cli(argv, capsys)
    return code, err


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["data.label_column=nope"], "no label column 'nope'; the data has text, label"),
        (["model.task=token-classification"], "column 'text' must hold lists of words"),
        (["model.task=token-classification", "data.text_column=words"], "no column 'words'"),
        (
            ["model.problem_type=multi_label_classification"],
            "multi-label classification needs a list of labels",
        ),
        (["data.validation=dev"], "neither a file nor usable as a split name"),
        (["data.max_length=512"], "data.max_length=512 is above the model's 128 positions"),
        (["model.source=null"], "model.source is required"),
        (["model.tokenizer=BIG_TOKENIZER"], "it has 3,000 tokens, the model's vocabulary 1,000"),
        (["data.source=HEADER_ONLY"], "header-only.csv has no rows, only the header 'text,label'"),
        (["data.streaming=true"], "data.streaming is for pretraining corpora"),
        (
            ["model.task=regression"],
            "model.task='regression' is not one of sequence-classification, token-classification",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(extra, expect, tmp_path, roberta_dir, datasets_dir, capsys):
    if "model.tokenizer=BIG_TOKENIZER" in extra:
        from longattn_cli.testing import train_bpe_tokenizer

        train_bpe_tokenizer(tmp_path / "big", vocab_size=3000)
        extra = [f"model.tokenizer={tmp_path / 'big'}"]
    if "data.source=HEADER_ONLY" in extra:
        (tmp_path / "header-only.csv").write_text("text,label\n")
        extra = [f"data.source={tmp_path / 'header-only.csv'}"]
    argv = [
        "finetune",
        f"model.source={roberta_dir}",
        f"data.source={datasets_dir / 'single-train.jsonl'}",
        "data.max_length=64",
        f"training.output_dir={tmp_path}",
        "training.max_steps=1",
        *extra,
    ]
    code, err = cli(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert expect in err


def test_interrupted_finetuning_resumes_to_the_same_model(tmp_path, roberta_dir, datasets_dir):
    import os
    import signal

    full, split = tmp_path / "full", tmp_path / "split"
    extra = ("model.dropout=0.1", "training.save_every=100")
    assert run(recipe(full, roberta_dir, datasets_dir, "single", *extra)) == 0

    def interrupt(step, model):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    assert (
        run(recipe(split, roberta_dir, datasets_dir, "single", *extra), on_step=interrupt)
        == 128 + signal.SIGTERM
    )
    assert run(recipe(split, roberta_dir, datasets_dir, "single", *extra, "training.resume=latest")) == 0
    a, b = load_file(str(full / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert predictions(full) == predictions(split)


def test_a_directory_of_split_files_and_a_saved_dataset(tmp_path, roberta_dir, datasets_dir):
    import shutil

    import datasets

    files = tmp_path / "files"
    files.mkdir()
    for split in ("train", "validation", "test"):
        shutil.copy(datasets_dir / f"single-{split}.jsonl", files / f"{split}.jsonl")
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {s: datasets.Dataset.from_json(str(files / f"{s}.jsonl")) for s in ("train", "validation")}
    ).save_to_disk(str(saved))
    for source in (files, saved):
        out = tmp_path / f"run-{source.name}"
        over = [
            f"model.source={roberta_dir}",
            f"data.source={source}",
            "data.validation=validation",
            "data.max_length=64",
            f"training.output_dir={out}",
            "training.max_steps=2",
            "training.batch_size=8",
            f"data.cache_dir={tmp_path / 'cache'}",
        ]
        assert run(load_recipe("finetune", None, parse_overrides(over))) == 0
        assert len(predictions(out)) == 20  # the validation split (no test given)
    with pytest.raises(Exception, match="has no split 'dev'; it has train, validation"):
        run(
            load_recipe(
                "finetune", None, parse_overrides([*over, "data.validation=dev", "training.overwrite=true"])
            )
        )


def test_validation_subset_for_evaluation_and_the_majority_baseline(tmp_path, roberta_dir, datasets_dir):
    """data.validation_examples: training evaluates on a seeded N of the validation split, while the test
    split is scored whole; results.json records the majority-class accuracy of that split."""
    out = tmp_path / "run"
    assert run(recipe(out, roberta_dir, datasets_dir, "single", "data.validation_examples=3")) == 0
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval_accuracy" in x]
    assert evals and all(round(e["eval_accuracy"] * 3, 6) in (0, 1, 2, 3) for e in evals)
    preds, results = predictions(out), json.loads((out / "results.json").read_text())
    assert len(preds) == 20
    labels = [p["label"] for p in preds]
    assert results["majority_accuracy"] == pytest.approx(max(map(labels.count, set(labels))) / 20)
    with pytest.raises(UserError, match="validation_examples must be positive"):
        recipe(out, roberta_dir, datasets_dir, "single", "data.validation_examples=0")


FOREIGN_FAMILIES = {  # tiny configs: Longformer's window and BigBird's blocks small enough for 64 tokens
    "longformer": {"attention_window": 8},
    "big_bird": {"attention_type": "block_sparse", "block_size": 4, "num_random_blocks": 1},
    "modernbert": {"local_attention": 16, "global_attn_every_n_layers": 2},
}


@pytest.mark.parametrize("family", list(FOREIGN_FAMILIES))
def test_foreign_encoder_baselines_train_with_the_same_recipe(family, tmp_path, bpe_dir, datasets_dir):
    """A Longformer, BigBird or ModernBERT checkpoint as model.source: the same loop, evaluation, checkpoints,
    resume and summary as ours, its own attention kept; the summary and lra report name its family."""
    from longattn_cli.lra.report import read_run

    src = tmp_path / family
    tiny_reference(family, src, head="ForMaskedLM", tokenizer_dir=bpe_dir, **FOREIGN_FAMILIES[family])
    out = tmp_path / "run"
    steps = ["training.max_steps=4", "training.save_every=2", "training.eval_every=2"]
    assert run(recipe(out, src, datasets_dir, "single", *steps)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["family"] == family and summary["attention"] == family and summary["steps"] == 4
    assert len(predictions(out)) == 20 and read_run(out)["family"] == family
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family and config["architectures"][0].endswith("ForSequenceClassification")
    # Stopped by SIGTERM after step 3 and resumed: the same model and predictions as the run straight through.
    import os
    import signal

    def interrupt(step, model):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    split = tmp_path / "split"
    assert run(recipe(split, src, datasets_dir, "single", *steps), on_step=interrupt) == 128 + signal.SIGTERM
    assert run(recipe(split, src, datasets_dir, "single", *steps, "training.resume=latest")) == 0
    a, b = load_file(str(out / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert predictions(out) == predictions(split)
    with pytest.raises(
        UserError, match=r"model.attention does not apply to .* checkpoint that keeps its own"
    ):
        run(recipe(tmp_path / "bad", src, datasets_dir, "single", "model.attention=yoso"))
