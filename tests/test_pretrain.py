"""`longattn pretrain`: a tiny recipe-level run end to end, bit-exact resume, signals, NaN, and one-line errors."""

import json
import os
import shutil
import signal

import pytest
import torch
from helpers import TINY_PRETRAIN
from helpers import run_cli as cli
from safetensors.torch import load_file

from longattn_cli.fill_mask import predict
from longattn_cli.testing import python_docs_text, tiny_reference
from longattn_cli.training.config import load_recipe
from longattn_cli.training.pretrain import run

TINY = [*TINY_PRETRAIN, "training.warmup_steps=2", "training.log_every=1"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "docs.txt").write_text("\n\n".join(python_docs_text()[:300]) + "\n")
    return d / "docs.txt"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def args(out, corpus, cache, *extra):
    return [*TINY, f"data.source={corpus}", f"data.cache_dir={cache}", f"training.output_dir={out}", *extra]


def weights(directory):
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.smoke
def test_recipe_run_writes_a_checkpoint_that_fill_mask_loads(tmp_path, corpus, cache, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(
        [
            "pretrain",
            "--recipe",
            "recipes/pretrain/default.yaml",
            *args(out, corpus, cache, "training.max_steps=4", "training.save_every=2"),
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all(x["loss"] > 0 and x["tokens_per_s"] > 0 for x in lines)
    assert lines[0]["lr"] == 0.0 and lines[2]["lr"] > 0  # linear warm-up from zero
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert "tokens/s" in stdout  # the summary table
    # The final model is the step-4 checkpoint's, and fill-mask reads the directory as it is.
    final, ckpt = weights(out), weights(out / "checkpoints" / "step-0000004")
    assert all(torch.equal(final[k], ckpt[k]) for k in final)
    preds = predict(["The <mask> statement."], str(out), top_k=2)
    assert len(preds[0]["predictions"][0]) == 2


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_resume_continues_bit_exactly(tmp_path, corpus, cache, streaming):
    """6 steps in one go == 3 steps, stopped by SIGINT, then resumed for the rest: identical weights."""
    full, split = tmp_path / "full", tmp_path / "split"
    common = [
        "training.max_steps=6",
        "training.save_every=100",
        "model.dropout=0.1",
        "training.learning_rate=3e-3",
        f"data.streaming={streaming}",
        "data.streaming_examples=8",
    ]
    assert run(load_recipe("pretrain", None, _ov(args(full, corpus, cache, *common)))) == 0

    def interrupt(step, model):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # handled at the next step boundary: saves step 4

    code = run(load_recipe("pretrain", None, _ov(args(split, corpus, cache, *common))), on_step=interrupt)
    assert code == 128 + signal.SIGINT
    saved = [p.name for p in (split / "checkpoints").iterdir()]
    assert saved == ["step-0000004"]
    assert not (split / "model.safetensors").exists()  # no final model for an interrupted run
    assert (
        run(load_recipe("pretrain", None, _ov(args(split, corpus, cache, *common, "training.resume=latest"))))
        == 0
    )
    a, b = weights(full), weights(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    reference = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in lines] == reference


@pytest.mark.smoke
@pytest.mark.parametrize("mechanism", ["softmax", "yoso", "nystrom", "lsg"])
def test_two_training_steps_of_each_mechanism_give_a_finite_loss_and_a_loadable_model(
    mechanism, tmp_path, corpus, cache, capsys
):
    out = tmp_path / "run"
    extra = ["training.max_steps=2", f"model.attention={mechanism}"]
    if mechanism == "lsg":
        extra += ["model.attention_settings.block_size=16", "model.attention_settings.sparse_block_size=16"]
    code, _, err = cli(["pretrain", *args(out, corpus, cache, *extra)], capsys)
    assert code == 0, err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(0 < x["loss"] < 100 for x in lines)
    assert json.loads((out / "config.json").read_text())["attention"] == mechanism
    assert len(predict(["The <mask> statement."], str(out), top_k=2)[0]["predictions"][0]) == 2


def test_resume_with_a_different_recipe_fails_fast(tmp_path, corpus, cache, capsys):
    out = tmp_path / "run"
    assert run(load_recipe("pretrain", None, _ov(args(out, corpus, cache, "training.max_steps=2")))) == 0
    capsys.readouterr()
    code, _, err = cli(["pretrain", *args(out, corpus, cache, "training.max_steps=2")], capsys)
    assert (
        code == 2
        and "holds checkpoints of an earlier run (up to step-0000002); continue it with --resume" in err
    )
    code, _, err = cli(
        [
            "pretrain",
            *args(out, corpus, cache, "training.max_steps=2", "training.learning_rate=0.5"),
            "--resume",
            "latest",
        ],
        capsys,
    )
    assert code == 2
    assert (
        "training.learning_rate=0.002 in the checkpoint, 0.5 now" in err
        and len(err.strip().splitlines()) == 1
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, cache):
    out = tmp_path / "run"

    def poison(step, model):
        if step == 3:
            with torch.no_grad():
                model.longattn.embeddings.layer_norm.weight.fill_(float("nan"))

    from longattn_cli.errors import UserError

    with pytest.raises(UserError, match=r"loss is nan at step 4; .*checkpoint is .*step-0000002"):
        run(
            load_recipe(
                "pretrain",
                None,
                _ov(args(out, corpus, cache, "training.max_steps=6", "training.save_every=2")),
            ),
            on_step=poison,
        )
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    assert all(torch.isfinite(v).all() for v in weights(out / "checkpoints" / "step-0000002").values())


def test_packed_data_is_cached_and_reused(tmp_path, corpus, cache):
    from accelerate import Accelerator

    from longattn_cli.training.pretrain import build

    recipe = load_recipe("pretrain", None, _ov(args(tmp_path, corpus, tmp_path / "cache")))
    first = build(recipe, Accelerator())
    second = build(recipe, Accelerator())
    assert any("packed and cached" in n for n in first.notes)
    assert any("reused from the cache" in n for n in second.notes)
    assert first.fingerprint == second.fingerprint
    assert all(len(x) == 64 for x in first.train["input_ids"])
    changed = tmp_path / "other.txt"
    changed.write_text(
        corpus.read_text() + "\n\nOne more paragraph that changes the fingerprint of the data.\n"
    )
    third = build(
        load_recipe("pretrain", None, _ov(args(tmp_path, changed, tmp_path / "cache"))), Accelerator()
    )
    assert third.fingerprint["data"] != first.fingerprint["data"]
    assert third.fingerprint["tokenizer"] != first.fingerprint["tokenizer"] or True  # retrained on other text


def _ov(items):
    from longattn_cli.training.config import parse_overrides

    return parse_overrides(items)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, bpe_dir):
    d = tmp_path_factory.mktemp("roberta")
    tiny_reference("roberta", d, tokenizer_dir=bpe_dir)  # 128 positions
    return d


def test_continues_pretraining_from_a_roberta_checkpoint(tmp_path, corpus, cache, roberta_dir):
    out = tmp_path / "run"
    over = args(out, corpus, cache, f"model.source={roberta_dir}", "training.max_steps=2")
    assert run(load_recipe("pretrain", None, _ov(over))) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "longattn" and cfg["hidden_size"] == 32 and cfg["vocab_size"] == 1000


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case,expect",
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("corrupt", "cannot read"),
        ("no-column", "no column 'text'; the data has body"),
        ("int-column", "column 'text' must hold strings, found Value('int64')"),
        ("too-little", "zero examples after packing"),
        ("offline-hub", "unreachable"),
        ("too-long", "data.max_length=256 is above the model's 128 positions"),
        ("tokenizer-mismatch", "does not match the model: padding id 0, the model's 1"),
        ("unknown-key", "unknown recipe key 'training.max_step'; valid keys in training: output_dir"),
        ("wrong-type", "training.max_steps must be an integer or null, got 'many'"),
        ("bad-value", "model.hidden_size=30 is not a multiple of model.num_attention_heads=4"),
        ("bad-attention", "unknown attention 'sofmax'"),
        ("bad-pattern", "pattern 'encoder.*' matches no parameter"),
        ("no-checkpoint", "no checkpoint under"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    case, expect, tmp_path, corpus, cache, capsys, roberta_dir, wordpiece_dir, monkeypatch
):
    source = corpus
    extra = []
    if case == "missing":
        source = tmp_path / "nope.txt"
    elif case == "empty":
        source = _bad(tmp_path, "empty.jsonl", "")
    elif case == "corrupt":
        source = _bad(tmp_path, "bad.jsonl", '{"text": "fine"}\n{"text": broken\n')
    elif case == "no-column":
        source = _bad(tmp_path, "x.jsonl", '{"body": "a long enough document"}\n')
    elif case == "int-column":
        source = _bad(tmp_path, "x.csv", "text\n1\n2\n")
    elif case == "too-little":
        source = _bad(tmp_path, "short.txt", "Only a few words here.\n")
        extra = ["model.tokenizer=" + str(roberta_dir)]
    elif case == "offline-hub":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        source = "someone/some-corpus"
    elif case == "too-long":
        extra = [f"model.source={roberta_dir}", "data.max_length=256"]
    elif case == "tokenizer-mismatch":
        extra = [f"model.source={roberta_dir}", f"model.tokenizer={wordpiece_dir}"]
    elif case == "unknown-key":
        extra = ["training.max_step=3"]
    elif case == "wrong-type":
        extra = ["training.max_steps=many"]
    elif case == "bad-value":
        extra = ["model.hidden_size=30"]
    elif case == "bad-attention":
        extra = ["model.attention=sofmax"]
    elif case == "bad-pattern":
        extra = ["model.freeze=encoder.*"]
    elif case == "no-checkpoint":
        extra = ["training.resume=latest"]
    argv = ["pretrain", *args(tmp_path / "out", source, cache, "training.max_steps=1", *extra)]
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert expect in err


def test_default_recipe_file_is_the_embedded_default():
    assert load_recipe("pretrain", "recipes/pretrain/default.yaml") == load_recipe("pretrain")


@pytest.mark.slow
def test_default_recipe_runs_offline_and_fill_mask_loads_it(tmp_path, capsys):
    """`longattn pretrain` as it ships (the embedded default recipe, in a scratch directory), shortened to 60
    of its 600 steps to keep the slow suite short; the README gives the full run's measured figures."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, stdout, err = cli(["pretrain", "training.max_steps=60", "training.eval_every=30"], capsys)
    finally:
        os.chdir(cwd)
    assert code == 0, err
    assert "unigram baseline" in stdout and "sample 1" in stdout and "held out for validation" in err
    out = tmp_path / "runs" / "pretrain-default"
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] >= 4096 and config["attention"] == "nystrom"
    assert config["attention_settings"]["conv_kernel_size"] == 9
    assert predict(["The <mask> statement."], str(out), top_k=1)
    shutil.rmtree(out)


def test_validation_loss_picks_the_best_model_with_gradient_accumulation(tmp_path, corpus, cache):
    out = tmp_path / "run"
    valid = tmp_path / "valid.txt"
    valid.write_text("\n\n".join(python_docs_text()[300:360]) + "\n")
    over = args(
        out,
        corpus,
        cache,
        "training.max_steps=4",
        "training.eval_every=2",
        f"data.validation={valid}",
        "training.gradient_accumulation_steps=2",
    )
    assert run(load_recipe("pretrain", None, _ov(over))) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval_loss" in x]
    assert [x["step"] for x in evals] == [2, 4] and all(x["eval_perplexity"] > 1 for x in evals)
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    best = min(evals, key=lambda x: x["eval_loss"])
    state = json.loads((out / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
    assert (
        state["best_step"] == best["step"] and state["tokens"] == 4 * 2 * 2 * 64
    )  # steps × micro × batch × length
    final, kept = weights(out), weights(out / "best")
    assert all(torch.equal(final[k], kept[k]) for k in final)


def test_signals_stop_at_the_boundary_and_a_second_ctrl_c_aborts():
    from longattn_cli.training.signals import Stop

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with Stop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's answer to Ctrl-C: ignored while saving
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_finished_run_is_extended_with_a_larger_max_steps(tmp_path, corpus, cache, capsys):
    """--resume latest training.max_steps=M continues a run that ended at N < M; the schedule becomes the
    one planned for M steps, and the extension is recorded in the checkpoint."""
    out = tmp_path / "run"
    common = ["training.learning_rate=3e-3", "training.save_every=100", "training.warmup_steps=0"]
    assert (
        run(load_recipe("pretrain", None, _ov(args(out, corpus, cache, "training.max_steps=4", *common))))
        == 0
    )
    more = args(out, corpus, cache, "training.max_steps=8", "training.log_every=2", *common)
    code, stdout, err = cli(["pretrain", *more, "--resume", "latest"], capsys)
    assert code == 0, err
    assert "extending the run from step 4" in err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 6, 8]  # log_every may change on resume
    # Step 5 uses the 8-step linear schedule's rate at step 4: 3e-3 × (8 - 4) / 8; step 6 the next one.
    assert lines[4]["lr"] == pytest.approx(3e-3 * 3 / 8)
    state = json.loads((out / "checkpoints" / "step-0000008" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["total_steps"] == 8
    [ext] = state["extensions"]
    assert ext["at_step"] == 4 and ext["total_steps"] == [4, 8]
    assert ext["changed"] == {"training.max_steps": [4, 8]}
    # Ending at or before the step already reached, or changing what the first steps computed, fails.
    code, _, err = cli(
        ["pretrain", *args(out, corpus, cache, "training.max_steps=6", *common), "--resume", "latest"], capsys
    )
    assert code == 2 and "the checkpoint is at step 8 and the run would end at step 6" in err
    assert len(err.strip().splitlines()) == 1
    changed = args(out, corpus, cache, "training.max_steps=10", "training.batch_size=4", *common)
    code, _, err = cli(["pretrain", *changed, "--resume", "latest"], capsys)
    assert code == 2 and "training.batch_size=2 in the checkpoint, 4 now" in err


def test_mixed_precision_no_as_yaml_and_override(tmp_path):
    """YAML 1.1 reads a bare `no` as false; recipes read it as the documented value "no"."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("training:\n  mixed_precision: no\n  overwrite: yes\n")
    loaded = load_recipe("pretrain", recipe)
    assert loaded.training.mixed_precision == "no" and loaded.training.overwrite is True
    assert (
        load_recipe("pretrain", None, _ov(["training.mixed_precision=no"])).training.mixed_precision == "no"
    )
    ft = load_recipe(
        "finetune", None, _ov(["training.mixed_precision=no", "model.source=x", "data.source=y"])
    )
    assert ft.training.mixed_precision == "no"


def test_a_tokenizer_larger_than_the_vocabulary_is_one_line(tmp_path, corpus, cache, capsys, bpe_dir):
    src = tmp_path / "small"
    tiny_reference("roberta", src, vocab_size=100, max_position_embeddings=80)
    code, _, err = cli(
        [
            "pretrain",
            *args(tmp_path / "o", corpus, cache, f"model.source={src}", f"model.tokenizer={bpe_dir}"),
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has 1,000 tokens, the model's vocabulary 100" in err


def test_held_out_documents_give_the_closing_report(tmp_path, corpus, cache, capsys):
    """data.validation_split holds documents out; the summary shows the validation loss before and after
    next to the unigram baseline, and fill-mask predictions on held-out sentences."""
    out = tmp_path / "run"
    extra = ["training.max_steps=3", "data.validation_split=0.2", "data.max_length=128"]
    code, stdout, err = cli(["pretrain", *args(out, corpus, cache, *extra)], capsys)
    assert code == 0, err
    assert "60 documents held out for validation" in err  # 20% of 300
    assert "validation loss" in stdout and "unigram baseline" in stdout and "sample 1" in stdout
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
    assert len(evals) == 1 and evals[0]["step"] == 3


def test_unigram_baseline_by_hand(bpe_dir):
    from transformers import AutoTokenizer

    from longattn_cli.training.pretrain import unigram_loss

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    a, b = 10, 11  # two ordinary tokens; the special ones are left out of counts and targets
    train = [{"input_ids": [0, a, a, a, b, 2]}]
    rows = [{"input_ids": [0, a, b, 2]}]
    counts = torch.ones(len(tok), dtype=torch.float64)
    counts[a] += 3
    counts[b] += 1
    counts[sorted(tok.all_special_ids)] = 0
    p = counts / counts.sum()
    expected = -(p[a].log() + p[b].log()) / 2
    assert unigram_loss(train, rows, tok) == pytest.approx(float(expected))
