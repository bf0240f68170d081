"""`longattn compare`: a user's recipe fine-tuned once per mechanism and once per baseline checkpoint (here a
Longformer with its own attention), each in its own process, finished runs skipped and interrupted ones
resumed; one table (within 80 columns), its rows as JSON, and one plot."""

import json

import pytest
import yaml
from helpers import run_cli
from test_finetune import datasets_dir, roberta_dir  # noqa: F401  (fixtures)

from longattn_cli.testing import tiny_reference

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def user_recipe(tmp_path, roberta_dir, datasets_dir):  # noqa: F811
    files = {s: str(datasets_dir / f"single-{s}.jsonl") for s in ("train", "validation", "test")}
    recipe = {
        "model": {"source": str(roberta_dir), "task": "sequence-classification"},
        "data": {
            "source": files["train"],
            "validation": files["validation"],
            "test": files["test"],
            "max_length": 64,
            "cache_dir": str(tmp_path / "cache"),
        },
        "training": {"batch_size": 8, "max_steps": 2, "eval_every": 2, "save_every": 1, "warmup_steps": 0},
    }
    path = tmp_path / "my-task.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_each_mechanism_and_a_baseline_then_skip_and_resume(tmp_path, user_recipe, bpe_dir, capsys):
    longformer = tmp_path / "tiny-longformer"
    tiny_reference("longformer", longformer, tokenizer_dir=bpe_dir, attention_window=8)
    out = tmp_path / "cmp"
    args = ["compare", "--recipe", str(user_recipe), "--attention", "softmax,nystrom"]
    args += ["--sources", str(longformer), "-o", str(out)]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    rows = json.loads((out / "compare.json").read_text())["rows"]
    record = json.loads((out / "compare.json").read_text())
    assert record["when"] and record["command"] and "commit" in record  # the file says where it came from
    assert [r["label"] for r in rows] == ["softmax", "nystrom", str(longformer)]
    assert [r["attention"] for r in rows] == ["softmax", "nystrom", "longformer"]
    for r in rows:
        assert r["metric"] == "accuracy" and 0 <= r["value"] <= 1 and r["split"] == "test"
        assert 0 < r["baseline"] < 1 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["wall_time_s"] > 0 and r["steps"] == 2
    table = (out / "compare.txt").read_text()
    assert table in stdout and max(len(line) for line in table.splitlines()) <= 80
    assert "baseline: majority class" in table
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"

    # softmax and the baseline are done; nystrom "was interrupted" after its checkpoints and resumes.
    done = (out / "softmax" / "summary.json").stat().st_mtime_ns
    (out / "nystrom" / "summary.json").unlink()
    code, stdout, err = run_cli([*args, "training.max_steps=3"], capsys)
    assert code == 0, err
    assert (out / "softmax" / "summary.json").stat().st_mtime_ns == done
    assert err.count("done, skipped") == 2 and "nystrom" in err
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 3, 2]  # nystrom continued from step 2 to 3


def test_a_failed_run_stops_the_comparison_and_says_how_to_continue(tmp_path, user_recipe, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "-r", str(user_recipe), "--attention", "softmax,yoso", "-o", str(out)]
    code, _, err = run_cli([*args, "training.max_steps=-1"], capsys)
    assert code == 2 and "softmax stopped with exit code 2" in err and "run the same command again" in err
    assert not (out / "yoso").exists()


def test_bad_arguments_get_one_line(tmp_path, user_recipe, capsys):
    templated = str(tmp_path / "task-{attention}.yaml")
    for args, words in (
        (["--attention", "softmax,bigbird"], "valid: lsg, nystrom, softmax, yoso"),
        (["--attention", " , "], "comma-separated"),
        (["--attention", "softmax", "-r", str(tmp_path / "none.yaml")], "not found"),
        (["--attention", "softmax", "-r", templated], "task-softmax.yaml' not found"),
        (["--sources", "a/x,b/x"], "share the folder 'x'"),
        (["--sources", "a/x", "-r", templated], "--sources needs one recipe"),
    ):
        argv = ["compare", "-r", str(user_recipe), *args]
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "runs").exists()
