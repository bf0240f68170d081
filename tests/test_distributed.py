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
    "longattn_cmd",
    "pretrain",
]


FSDP = ["--use_fsdp", "--fsdp_version", "2"]  # sharded (fully_shard over gloo) instead of --multi_gpu's DDP
LAUNCHERS = pytest.mark.parametrize("launcher", [("--multi_gpu",), tuple(FSDP)], ids=["ddp", "fsdp2"])

# A tiny model on short blocks: the same for the two-process runs and the one-process check.
TINY = [*TINY_PRETRAIN, "model.dropout=0.1"]


def docs_corpus(tmp_path) -> Path:
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n\n".join(python_docs_text()[:300]) + "\n")
    return corpus


def command(launcher=("--multi_gpu",), name="pretrain") -> list[str]:
    """LAUNCH with another kind of launch (e.g. FSDP) in place of --multi_gpu, and another longattn command."""
    return [*LAUNCH[:3], *launcher, *LAUNCH[4:-1], name]


def launch(out, corpus, cache, *extra, wait=True, launcher=("--multi_gpu",)):
    argv = [
        *command(launcher),
        *TINY,
        f"data.source={corpus}",
        f"data.cache_dir={cache}",
        f"training.output_dir={out}",
        "training.max_steps=6",
        "training.save_every=3",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_two_processes_train_and_resume_bit_exactly(tmp_path):
    corpus = docs_corpus(tmp_path)
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


def _worker(launcher: subprocess.Popen, rank: int):
    """The training process of ``rank`` among the launcher's descendants (torchrun's workers carry RANK)."""
    import psutil

    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "longattn_cmd" in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
@LAUNCHERS
def test_a_signal_to_one_process_stops_both_at_one_step_and_the_run_resumes_bit_exactly(tmp_path, launcher):
    """SIGTERM to the second process alone (as a scheduler preempting one node would send): both stop at the
    same step boundary (the stop travels in the step's all-reduce), the main process saves one checkpoint and
    says so, and a resumed run ends with the weights of the uninterrupted one."""
    import signal
    import time

    corpus, cache = docs_corpus(tmp_path), tmp_path / "cache"
    steps = ("training.max_steps=300", "training.save_every=null")
    full = launch(tmp_path / "full", corpus, cache, *steps, launcher=launcher)
    assert full.returncode == 0, full.stderr[-2000:]
    split = tmp_path / "split"
    run = launch(split, corpus, cache, *steps, wait=False, launcher=launcher)
    metrics, began = split / "metrics.jsonl", time.monotonic()
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert run.poll() is None and time.monotonic() - began < 300, "the run ended before it was signalled"
        time.sleep(0.05)
    worker = _worker(run, 1)
    assert worker is not None
    worker.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode != 0  # the launcher reports its workers' 128 + SIGTERM
    said = stdout + stderr
    assert said.count("stopped by a signal on another process at step") == 1, said[-3000:]
    kept = [p.name for p in (split / "checkpoints").iterdir()]
    assert len(kept) == 1 and not (split / "model.safetensors").exists()
    stopped = int(kept[0].removeprefix("step-"))
    assert 3 <= stopped < 300
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, stopped + 1))  # one writer, no step twice
    again = launch(split, corpus, cache, *steps, "training.resume=latest", launcher=launcher)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(split / "model.safetensors")),
    )
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
@LAUNCHERS
def test_a_non_finite_loss_stops_both_processes_with_one_error_and_keeps_the_last_good_checkpoint(
    tmp_path, launcher
):
    out = tmp_path / "run"
    # Warm-up from a learning rate of 0 at step 1 to 2.5e29 at step 2: the weights overflow and step 3's loss,
    # all-reduced, is nan on both processes.
    done = launch(
        out,
        docs_corpus(tmp_path),
        tmp_path / "cache",
        "training.learning_rate=1e30",
        "training.warmup_steps=4",
        "training.max_grad_norm=null",
        "training.save_every=1",
        launcher=launcher,
    )
    assert done.returncode != 0
    errors = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]  # the main process says it for both
    assert "loss is nan at step 3" in errors[0] and "step-0000002" in errors[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    kept = load_file(str(out / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in kept.values())


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_fails_fast(tmp_path):
    from longattn_cmd.cli import main

    corpus = docs_corpus(tmp_path)
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


def _finetune_data(d: Path) -> dict[str, Path]:
    """Variable-length single-label splits (text with a keyword or not) from CPython's docs."""
    texts = [t[: 40 + 7 * (i % 23)] for i, t in enumerate(python_docs_text()[:200])]
    files = {}
    for split, part in (("train", texts[:120]), ("validation", texts[120:160]), ("test", texts[160:])):
        rows = [{"text": t, "label": "code" if "class" in t or "return" in t else "prose"} for t in part]
        files[split] = d / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


@pytest.mark.slow
def test_two_processes_evaluate_their_shares_with_one_process_results(tmp_path, bpe_dir):
    """Fine-tuning in two processes (batch 4 each) and in one (batch 4, two accumulated micro-batches: the same
    examples and, without dropout, bit-identical gradients): the same evaluations, best step, results.json and
    predictions.jsonl, though each process evaluated only its share of the batches."""
    from longattn_cli.testing import tiny_reference
    from longattn_cli.training.config import load_recipe, parse_overrides
    from longattn_cli.training.finetune import run

    source = tmp_path / "roberta"
    tiny_reference("roberta", source, tokenizer_dir=bpe_dir)
    files = _finetune_data(tmp_path)
    common = [
        f"model.source={source}",
        "model.dropout=0",
        f"data.source={files['train']}",
        f"data.validation={files['validation']}",
        f"data.test={files['test']}",
        "data.max_length=64",
        f"data.cache_dir={tmp_path / 'cache'}",
        "training.batch_size=4",
        "training.learning_rate=1e-3",
        "training.max_steps=6",
        "training.eval_every=2",
    ]
    two = tmp_path / "two"
    argv = [*LAUNCH[:-1], "finetune", *common, f"training.output_dir={two}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one = tmp_path / "one"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        over = [*common, f"training.output_dir={one}", "training.gradient_accumulation_steps=2"]
        assert run(load_recipe("finetune", None, parse_overrides(over))) == 0
    finally:
        torch.set_num_threads(before)

    def evals(out):
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in x.items() if k.startswith("eval_") or k == "step"}
            for x in lines
            if "eval_loss" in x
        ]

    assert evals(two) == evals(one) and len(evals(one)) == 3
    assert (two / "results.json").read_text() == (one / "results.json").read_text()
    assert (two / "predictions.jsonl").read_text() == (one / "predictions.jsonl").read_text()
    best = [
        json.loads((out / "summary.json").read_text())["results"].get("best accuracy") for out in (one, two)
    ]
    assert best[0] is not None and best[0] == best[1]  # "0.xxxx (step N)"

    # FSDP2: evaluation and predictions on an unsharded copy of the gathered weights, each process its share;
    # the weights match data parallel's to float rounding, so the predictions and the best step do too.
    fsdp = tmp_path / "fsdp"
    argv = [*command(FSDP, "finetune"), *common, f"training.output_dir={fsdp}"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    def labels(out):
        return [json.loads(x)["prediction"] for x in (out / "predictions.jsonl").read_text().splitlines()]

    assert labels(fsdp) == labels(one) and len(labels(one)) == 40
    assert [e["step"] for e in evals(fsdp)] == [2, 4, 6]
    for got, want in zip(evals(fsdp), evals(one), strict=True):
        assert got["eval_accuracy"] == want["eval_accuracy"]
        assert got["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-4)
    assert json.loads((fsdp / "summary.json").read_text())["results"]["best accuracy"] == best[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_machines(out, corpus, cache, *extra):
    """Two "machines" on this one, one process each, over the loopback address: what a two-node launch runs
    (``--num_machines 2 --machine_rank 0|1 --main_process_ip``), with the output directory on storage both
    see (as a cluster's shared filesystem)."""
    port = str(_free_port())
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = []
    for rank in (0, 1):
        argv = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "longattn_cmd", "pretrain", *TINY, f"data.source={corpus}", f"data.cache_dir={cache}",
            f"training.output_dir={out}", "training.max_steps=6", "training.save_every=3", *extra,
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
            )
        )
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        results.append((p.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_two_machines_over_loopback_train_write_once_and_resume_bit_exactly(tmp_path):
    corpus = docs_corpus(tmp_path)
    full = tmp_path / "full"
    # With validation: its loss is sharded across the machines' processes (and measured before training by
    # the main process alone, as the job is built one process after the other).
    runs = launch_two_machines(
        full, corpus, tmp_path / "cache", "data.validation_split=0.1", "training.eval_every=3"
    )
    for code, _, err in runs:
        assert code == 0, err[-2000:]
    summaries = [out.count("run summary") for _, out, _ in runs]
    assert summaries == [1, 0]  # the main process of machine 0 reports; machine 1 writes nothing
    assert re.search(r"processes\s+│\s+2\s", runs[0][1])
    lines = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4, 5, 6]  # one writer
    assert [x["step"] for x in lines if "eval_loss" in x] == [3, 6]
    assert "validation loss" in runs[0][1]
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000003", resumed / "checkpoints" / "step-0000003")
    again = launch_two_machines(
        resumed,
        corpus,
        tmp_path / "cache",
        "data.validation_split=0.1",
        "training.eval_every=3",
        "training.resume=latest",
    )
    for code, _, err in again:
        assert code == 0, err[-2000:]
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sharded_launches_that_cannot_run_are_one_clear_line(monkeypatch):
    """DeepSpeed, FSDP version 1, and FSDP in one CPU process stop before the run starts, saying what to do."""
    from longattn_cli.errors import UserError
    from longattn_cli.training.accelerator import make_accelerator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError, match="DeepSpeed is not supported.*--use_fsdp --fsdp_version 2"):
        make_accelerator("no")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match="FSDP version 1: .*add --fsdp_version 2"):
        make_accelerator("no")
    if torch.cuda.is_available():
        return
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(UserError, match=r"needs at least 2 processes \(WORLD_SIZE=1\)"):
        make_accelerator("no")


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_one_line_not_a_crawl(tmp_path, monkeypatch):
    """The flags decide: a CPU without avx512_bf16 or amx_bf16 refuses bf16 training in one line, one with
    either flag (or an unreadable cpuinfo) takes it."""
    from longattn_cli import devices
    from longattn_cli.errors import UserError
    from longattn_cli.training.accelerator import check_cpu_bf16, make_accelerator

    without, native = tmp_path / "without", tmp_path / "native"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    native.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert devices.cpu_native_bf16(str(without)) is False and devices.cpu_native_bf16(str(native)) is True
    assert devices.cpu_native_bf16(str(tmp_path / "absent")) is None
    if torch.cuda.is_available():
        return
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: False)
    with pytest.raises(UserError, match="no bf16 arithmetic in hardware .* use training.mixed_precision=no"):
        make_accelerator("bf16")  # refused before accelerate's state is touched
    check_cpu_bf16("no")  # fp32 is never refused
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: True)
    check_cpu_bf16("bf16")


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_data_parallel_and_resumes_bit_exactly(tmp_path):
    """`accelerate launch --use_fsdp --fsdp_version 2` (fully_shard over gloo): the same losses as data
    parallel and final weights within float rounding of it (tied decoder and embeddings stay one matrix);
    checkpoints hold every process's shards beside a normal Hugging Face model; a resume ignores a save that
    never completed and ends bit-identical to the uninterrupted run; a data parallel resume of it is refused."""
    from longattn_cli.models.modeling import LongAttnForMaskedLM

    corpus, cache = docs_corpus(tmp_path), tmp_path / "cache"
    ddp = launch(tmp_path / "ddp", corpus, cache)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    full = tmp_path / "fsdp"
    done = launch(full, corpus, cache, launcher=FSDP)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run summary") == 1
    steps = [json.loads(x)["step"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    step3 = full / "checkpoints" / "step-0000003"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (step3 / "sharded" / part).glob("*.distcp")) == [
            "__0_0.distcp",
            "__1_0.distcp",
        ]
    assert not (step3 / "optimizer.pt").exists()

    def losses(out):
        return [round(json.loads(x)["loss"], 5) for x in (out / "metrics.jsonl").read_text().splitlines()]

    assert losses(full) == losses(tmp_path / "ddp") and len(losses(full)) == 6
    a, d = load_file(str(full / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == d.keys()
    for k in a:
        torch.testing.assert_close(a[k], d[k], rtol=0, atol=1e-5)
    model = LongAttnForMaskedLM.from_pretrained(full)  # a normal checkpoint, tied as saved
    assert model.lm_head.decoder.weight is model.longattn.embeddings.word_embeddings.weight

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(step3, resumed / "checkpoints" / "step-0000003")
    partial = resumed / "checkpoints" / ".tmp-step-0000006" / "sharded"  # a save killed half-way
    partial.mkdir(parents=True)
    (partial / "__0_0.distcp").write_bytes(b"partial")
    wrong = launch(resumed, corpus, cache, "training.resume=latest")
    assert wrong.returncode != 0 and "written by a sharded (FSDP) run" in wrong.stderr, wrong.stderr[-2000:]
    again = launch(resumed, corpus, cache, "training.resume=latest", launcher=FSDP)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr + again.stdout and "step-0000003" in again.stderr + again.stdout
    b = load_file(str(resumed / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
