"""LRA data: the ListOps generator against its specification, byte-level text, and the report."""

import json
from pathlib import Path

import pytest
from helpers import run_cli as run

from longattn_cli.errors import UserError
from longattn_cli.lra import listops, text
from longattn_cli.lra.report import read_run, report

SMALL = listops.ListOpsSpec(train=40, validation=8, test=8, seed=3)


@pytest.mark.parametrize(
    "tree,value",
    [
        (["[MAX", 2, 9, ["[MIN", 4, 7], 0], 9),
        (["[MIN", 3, ["[MAX", 1, 8], 5], 3),
        (["[MED", 1, 7, 4], 4),
        (["[MED", 1, 2, 6, 9], 4),  # integer median of an even count: int((2 + 6) / 2)
        (["[SM", 9, 8, ["[SM", 5, 5]], 7),
        (7, 7),
    ],
)
def test_evaluate(tree, value):
    assert listops.evaluate(tree) == value


def test_generator_is_deterministic_and_follows_the_spec():
    a = list(listops.generate(SMALL))
    b = list(listops.generate(SMALL))
    assert a == b
    other = list(listops.generate(listops.ListOpsSpec(train=40, validation=8, test=8, seed=4)))
    assert [r["text"] for _, r in a] != [r["text"] for _, r in other]
    counts = {s: sum(1 for split, _ in a if split == s) for s in ("train", "validation", "test")}
    assert counts == {"train": 40, "validation": 8, "test": 8}
    texts = [r["text"] for _, r in a]
    assert len(set(texts)) == len(texts), "trees are unique across all splits"
    vocab = set(listops.VOCAB)
    for _, r in a:
        toks = r["text"].split()
        assert SMALL.min_length < len(toks) == r["length"] < SMALL.max_length
        assert set(toks) <= vocab
        assert toks.count("]") == sum(t.startswith("[") and t != "]" for t in toks)
        assert toks[0] in listops.OPERATORS
        assert 0 <= r["label"] <= 9
    assert len({r["label"] for _, r in a}) >= 5


def test_depth_and_arguments_stay_within_bounds():
    spec = listops.ListOpsSpec(
        train=30, validation=0, test=0, min_length=20, max_length=400, max_depth=3, max_args=4, seed=1
    )
    for _, r in listops.generate(spec):
        depth = deepest = 0
        args = [0]
        for tok in r["text"].split():
            if tok == "]":
                assert 2 <= args.pop() <= 4
                depth -= 1
                continue
            args[-1] += 1
            if tok in listops.OPERATORS:
                depth += 1
                deepest = max(deepest, depth)
                args.append(0)
        assert deepest <= 3


def test_dataset_and_tokenizer_round_trip(tmp_path):
    out = listops.write(SMALL, tmp_path / "lo")
    import datasets
    from transformers import AutoTokenizer

    data = datasets.load_dataset("json", data_files={s: str(out / f"{s}.jsonl") for s in ("train", "test")})
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    row = data["train"][0]
    ids = tok(row["text"])["input_ids"]
    assert ids[0] == tok.cls_token_id and len(ids) == row["length"] + 1
    assert tok.unk_token_id not in ids
    assert tok.decode(ids[1:]) == row["text"]
    built = listops.build_dataset(SMALL)
    assert built["train"].features["label"].num_classes == 10


def test_listops_cli_and_bad_values(tmp_path, capsys):
    code, out, err = run(
        [
            "data",
            "listops",
            "--out",
            str(tmp_path / "a"),
            "--train",
            "6",
            "--validation",
            "2",
            "--test",
            "2",
            "--seed",
            "5",
        ],
        capsys,
    )
    assert code == 0, err
    lines = (tmp_path / "a" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {"text", "label", "length"} <= set(json.loads(lines[0]))
    code, _, err = run(["data", "listops", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "not an empty directory" in err
    code, _, err = run(["data", "listops", "--out", str(tmp_path / "b"), "--min-length", "5000"], capsys)
    assert code == 2 and "min_length=5000" in err and len(err.strip().splitlines()) == 1


def test_byte_tokenizer_is_lossless():
    tok = text.build_tokenizer()
    s = "Ünïcode and plain text, 4k bytes max!"
    ids = tok(s)["input_ids"]
    assert len(ids) == len(s.encode()) + 1 and ids[0] == tok.cls_token_id
    assert tok.decode(ids, skip_special_tokens=True) == s
    assert len(tok) == 256 + 5


def test_text_from_aclimdb_folder_and_files(tmp_path):
    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for sub, n in (("pos", 3), ("neg", 2)):
            d = root / split / sub
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}_7.txt").write_text(f"{sub} review {i} of {split}")
    data = text.load(str(root))
    assert data["train"].num_rows == 5 and sorted(data["train"]["label"]) == [0, 0, 1, 1, 1]
    assert data["validation"]["text"] == data["test"]["text"]
    files = tmp_path / "files"
    files.mkdir()
    for split in ("train", "test"):
        (files / f"{split}.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    assert text.load(str(files))["test"].num_rows == 2
    with pytest.raises(UserError, match="no train file"):
        text.load(str(tmp_path))


def test_text_offline_hub_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(["data", "text", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "unreachable" in err and "--source" in err


def test_report_puts_runs_next_to_published(tmp_path, capsys):
    runs = []
    for mech, acc in (("softmax", 0.365), ("nystrom", 0.371), ("yoso", 0.36)):
        d = tmp_path / f"listops-{mech}"
        d.mkdir()
        (d / "summary.json").write_text(
            json.dumps(
                {
                    "task": "listops",
                    "attention": mech,
                    "test_metrics": {"accuracy": acc},
                    "train_time_s": 600,
                    "peak_memory_mb": 812.5,
                    "steps": 5000,
                }
            )
        )
        runs.append(str(d))
    rows = report(runs)
    by = {r["attention"]: r for r in rows}
    assert by["softmax"]["accuracy"] == pytest.approx(36.5) and by["softmax"]["published"] == pytest.approx(
        37.10
    )
    assert by["nystrom"]["published"] == pytest.approx(37.15)
    out = capsys.readouterr().out
    assert "+0.00" not in out and "-0.60" in out and "Nyströmformer" in out
    code, _, err = run(["lra", "report", str(tmp_path / "missing")], capsys)
    assert code == 2 and "no summary.json" in err


LRA_DIR = Path(__file__).resolve().parents[1] / "recipes" / "lra"
LRA_RECIPES = sorted(LRA_DIR.glob("**/*.yaml"))  # the paper scale and cpu/


@pytest.fixture(scope="module")
def lra_data(tmp_path_factory):
    """Tiny ListOps and Text data sets laid out as the recipes expect under data/lra/."""
    root = tmp_path_factory.mktemp("lra")
    spec = listops.ListOpsSpec(train=24, validation=8, test=8, min_length=20, max_length=120, seed=0)
    listops.write(spec, root / "listops")
    texts = root / "text"
    texts.mkdir()
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        rows = [
            {"text": ("good movie " if i % 2 else "bad film ") * (3 + i % 5), "label": i % 2}
            for i in range(n)
        ]
        (texts / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text.build_tokenizer().save_pretrained(texts / "tokenizer")
    return root


def test_every_task_and_mechanism_has_an_lra_recipe_at_both_scales():
    names = {p.relative_to(LRA_DIR).as_posix() for p in LRA_RECIPES}
    each = {f"{t}-{m}.yaml" for t in ("listops", "text") for m in ("softmax", "yoso", "nystrom", "lsg")}
    assert each | {f"cpu/{n}" for n in each} <= names


@pytest.mark.parametrize("path", LRA_RECIPES, ids=lambda p: p.relative_to(LRA_DIR).as_posix())
def test_lra_recipe_smoke_run(path, lra_data, tmp_path):
    """Each LRA recipe trains from scratch (tiny data, 2 steps) and its run reports a test accuracy."""
    from longattn_cli.training import finetune
    from longattn_cli.training.config import load_recipe

    task = path.stem.split("-")[0]
    overrides = {
        "model.tokenizer": str(lra_data / task / "tokenizer"),
        "data.source": str(lra_data / task / "train.jsonl"),
        "data.validation": str(lra_data / task / "validation.jsonl"),
        "data.test": str(lra_data / task / "test.jsonl"),
        "data.max_length": 128,
        "data.cache_dir": str(tmp_path / "cache"),
        "training.output_dir": str(tmp_path / path.stem),
        "training.max_steps": 2,
        "training.warmup_steps": 1,
        "training.batch_size": 4,
        "training.eval_every": 2,
        "training.save_every": 2,
    }
    recipe = load_recipe("finetune", path, overrides)
    assert recipe.model.scratch["hidden_size"] == 64 and recipe.model.scratch["classifier_pooling"] == "mean"
    assert finetune.run(recipe) == 0
    row = read_run(tmp_path / path.stem)
    assert row["task"] == task and row["attention"] == recipe.model.attention
    assert 0 <= row["accuracy"] <= 100 and row["steps"] == 2 and row["peak_memory_mb"] > 0


SMOKE = [  # the CPU recipes at toy size: 2 steps on 24 trees
    "data.max_length=128",
    "training.max_steps=2",
    "training.warmup_steps=1",
    "training.batch_size=4",
    "training.eval_every=2",
    "training.save_every=1",
]


def test_lra_run_builds_data_trains_each_mechanism_resumes_and_reports(tmp_path, monkeypatch, capsys):
    """One command: the data built where the recipes read it, each mechanism trained in its own process, a
    finished run skipped, an interrupted one resumed from its checkpoint, the table printed and saved."""
    from longattn_cli.lra import run as lra_run

    monkeypatch.chdir(tmp_path)
    tiny = {"train": 24, "validation": 8, "test": 8, "min_length": 20, "max_length": 120}
    monkeypatch.setitem(lra_run.LISTOPS, "cpu", tiny)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    code, out, err = run(
        ["lra", "run", "listops", "--attention", "softmax,lsg", "-o", "sweep", *SMOKE, cache], capsys
    )
    assert code == 0, err
    assert len((tmp_path / "data/lra/listops-cpu/train.jsonl").read_text().splitlines()) == 24
    record = json.loads((tmp_path / "sweep/listops.json").read_text())
    assert record["when"] and record["command"] and "commit" in record
    rows = {r["attention"]: r for r in record["rows"]}
    assert set(rows) == {"softmax", "lsg"} and all(r["steps"] == 2 for r in rows.values())
    assert all(0 < r["majority"] < 100 and r["tokens_per_s"] > 0 for r in rows.values())
    assert "major" in out and "listops  softmax" in (tmp_path / "sweep/listops.txt").read_text()

    # softmax finished; lsg "was interrupted" after its checkpoints: it resumes and runs one more step.
    done = (tmp_path / "sweep/listops-softmax/summary.json").stat().st_mtime_ns
    (tmp_path / "sweep/listops-lsg/summary.json").unlink()
    code, out, err = run(
        [
            "lra",
            "run",
            "listops",
            "--attention",
            "softmax,lsg",
            "-o",
            "sweep",
            *SMOKE,
            cache,
            "training.max_steps=3",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "sweep/listops-softmax/summary.json").stat().st_mtime_ns == done
    assert "done, skipped" in err
    lsg = json.loads((tmp_path / "sweep/listops-lsg/summary.json").read_text())
    assert lsg["steps"] == 3
    lines = [json.loads(x) for x in (tmp_path / "sweep/listops-lsg/metrics.jsonl").read_text().splitlines()]
    evals = [x["step"] for x in lines if "eval_accuracy" in x]
    assert evals.count(2) == 1 and evals[-1] == 3, "resumed after step 2, not restarted"


def test_lra_run_stops_at_a_failed_run_and_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    listops.write(
        listops.ListOpsSpec(train=24, validation=8, test=8, min_length=20, max_length=120),
        tmp_path / "data/lra/listops-cpu",
    )
    code, out, err = run(["lra", "run", "listops", "-o", "sweep", "training.max_steps=-1"], capsys)
    assert code == 2 and "listops-softmax stopped with exit code 2" in err
    assert not (tmp_path / "sweep/listops-yoso").exists(), "the sweep stops at the first failure"


def test_lra_run_names_bad_arguments(capsys):
    for args, words in (
        (["lra", "run", "listop"], "listops, text"),
        (["lra", "run", "listops", "--scale", "gpu"], "cpu, paper"),
        (["lra", "run", "text", "--attention", "softmax,bigbird"], "softmax, yoso, nystrom, lsg"),
    ):
        code, _, err = run(args, capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_report_fits_80_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    d = tmp_path / "a-rather-long-directory-name-for-the-runs" / "listops-nystrom-cpu-scale"
    d.mkdir(parents=True)
    summary = {"task": "listops", "attention": "nystrom", "test_metrics": {"accuracy": 0.3712},
               "train_time_s": 1234.5, "peak_memory_mb": 12812.5, "steps": 5000}  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary))
    report([str(d)])
    out = capsys.readouterr().out
    table = out.split("[1] ")[0]
    assert max(len(line) for line in table.splitlines()) <= 80, out
    assert "37.12" in out and "37.15" in out and "12,812" in out and "20.6" in out
    assert f"[1] {d}" in out  # the run directory, whole, below the table
