"""`longattn benchmark`: tiny sweeps end to end, its files, its ratios, its failure handling and bad input.

Nothing here asserts on a time: speed is what the command reports, not what the tests check.
"""

import csv
import json
import re

import pytest
import torch
from helpers import run_cli as run

from longattn_cli.attention import available
from longattn_cli.bench import candidates as benchmark
from longattn_cli.bench.point import measure
from longattn_cli.bench.references import REFERENCES
from longattn_cli.testing import tiny_reference

# Tiny shapes, one warm-up and one timed step: these tests check what is measured and reported, not speed.
# One thread: on a busy machine a second thread mostly waits for a core, and nothing here measures speed.
QUICK = "--warmup 1 --repeats 1 --min-time 0 --threads 1 --device cpu".split()
TINY = ["--model-size", "tiny", "--heads", "2", "--head-dim", "8", *QUICK]


def sweep(tmp_path, capsys, args, *extra, shape=TINY):
    """Run ``benchmark`` with the tiny shapes, ``args`` (one string) and ``extra`` (paths); return the JSON."""
    files = ["--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv"), "--overwrite"]  # reused
    code, out, err = run(["benchmark", *shape, *files, *args.split(), *extra], capsys)
    assert code == 0, err
    return json.loads((tmp_path / "b.json").read_text()), out


def by_key(points):
    return {(p["mode"], p["n"], p["label"]): p for p in points}


def test_layer_sweep_both_modes_with_reference(tmp_path, capsys):
    data, out = sweep(tmp_path, capsys, "--scope layer --lengths 32,64 --reference --no-isolate")
    ours = list(benchmark.variants())
    labels = (
        ours
        + ["hf-roberta-sdpa"]
        + [r.label for m in available() if m != "softmax" for r in REFERENCES.get(m, [])]
    )
    points = data["points"]
    assert len(points) == 2 * 2 * len(labels) + 2  # and the dropout-free SDPA, in train mode only
    assert {p["label"] for p in points} == set(labels) | {benchmark.FUSED}
    assert {p["mode"] for p in points if p["label"] == benchmark.FUSED} == {"train"}
    for p in points:  # train mode divides by the fused SDPA; forward mode by transformers' SDPA
        if p["status"] == "ok":
            assert p["sdpa_baseline"] == (benchmark.FUSED if p["mode"] == "train" else "hf-roberta-sdpa"), p
    assert {(p["mode"], p["n"]) for p in points} == {(m, n) for m in ("forward", "train") for n in (32, 64)}
    for p in points:  # every registered variant runs; a reference may be unavailable (with its reason)
        assert p["status"] == "ok" or (p["kind"] == "reference" and p["status"] == "unavailable"), p
        if p["status"] == "ok":
            assert p["scope"] == "layer" and p["batch"] == 1
            assert p["time_min_s"] <= p["time_q1_s"] <= p["time_s"] <= p["time_q3_s"] <= p["time_max_s"]
            assert len(p["times_s"]) == 1 and p["tokens_per_s"] == pytest.approx(p["n"] / p["time_s"])
            assert p["peak_memory_bytes"] > 0 and p["memory_method"].startswith("torch.profiler")
            # the roofline: the algorithm's count, the rate it implies, and its share of the machine's ceiling
            assert p["gflop"] > 0 and p["gflops"] == pytest.approx(p["gflop"] / p["time_s"])
            assert p["ceiling_share"] == pytest.approx(p["gflops"] / data["machine"]["ceiling"]["gflops"])
    m = data["machine"]
    assert m["ceiling"]["gflops"] == max(m["ceiling"]["readings_gflops"]) > 0  # before and after the sweep
    assert m["ceiling"]["method"].startswith("torch.mm 2048") and len(m["ceiling"]["readings_gflops"]) == 2
    assert m["cpu"] and m["threads"] == 1 and m["torch"] == torch.__version__
    assert m["device"] == "cpu" and m["gpu"] is None
    assert data["options"]["shape"]["hidden_size"] == 16 and data["options"]["shape"]["num_heads"] == 2
    assert "layer · forward" in out and "softmax-sdpa" in out


def test_ratios_come_from_the_same_run(tmp_path, capsys):
    data, _ = sweep(
        tmp_path, capsys, "--lengths 32 --mode forward --attention softmax --reference --no-isolate"
    )
    pts = by_key(data["points"])
    theirs = pts["forward", 32, "hf-roberta-sdpa"]
    for label in ("softmax-sdpa", "softmax-eager"):
        p = pts["forward", 32, label]
        assert p["reference"] == "hf-roberta-sdpa" and p["sdpa_baseline"] == "hf-roberta-sdpa"
        assert p["vs_reference_time"] == pytest.approx(p["time_s"] / theirs["time_s"])
        assert p["vs_sdpa_time"] == pytest.approx(p["time_s"] / theirs["time_s"])
        assert p["vs_reference_memory"] == pytest.approx(p["peak_memory_bytes"] / theirs["peak_memory_bytes"])
    assert theirs["vs_sdpa_time"] == pytest.approx(1.0) and theirs["vs_reference_time"] is None
    rows = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert len(rows) == len(data["points"])
    row = next(r for r in rows if r["label"] == "softmax-eager")
    assert float(row["vs_reference_time"]) == pytest.approx(
        pts["forward", 32, "softmax-eager"]["vs_reference_time"]
    )
    assert row["machine_cpu"] == data["machine"]["cpu"] and row["machine_torch"] == torch.__version__
    assert json.loads(row["settings"]) == {"implementation": "eager"} and row["dtype"] == "float32"
    assert float(row["ceiling_share"]) == pytest.approx(pts["forward", 32, "softmax-eager"]["ceiling_share"])
    assert float(row["machine_ceiling_gflops"]) == pytest.approx(data["machine"]["ceiling"]["gflops"])


def test_without_reference_sdpa_baseline_is_ours(tmp_path, capsys):
    data, _ = sweep(
        tmp_path, capsys, "--lengths 32 --mode forward --attention softmax-eager,softmax-sdpa --no-isolate"
    )
    p = by_key(data["points"])["forward", 32, "softmax-eager"]
    assert p["sdpa_baseline"] == "softmax-sdpa" and p["reference"] is None
    assert {q["kind"] for q in data["points"]} == {"ours"}


def test_model_scope(tmp_path, capsys):
    data, out = sweep(
        tmp_path,
        capsys,
        "--scope model --lengths 32,64 --attention softmax-sdpa --reference --layers 1 --no-isolate",
    )
    assert [p["status"] for p in data["points"]] == ["ok"] * len(data["points"])
    assert {p["label"] for p in data["points"]} == {"softmax-sdpa", "hf-roberta-sdpa", benchmark.FUSED}
    assert {p["mode"] for p in data["points"]} == {"forward", "train"}
    assert data["options"]["shape"]["num_layers"] == 1 and "model · forward+backward" in out


def test_model_checkpoint_and_its_position_limit(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    tiny_reference("roberta", ckpt, vocab_size=100)  # 128 positions; no tokenizer needed
    args = "--scope model --lengths 128 --mode train --attention softmax-sdpa --reference --no-isolate"
    data, _ = sweep(tmp_path, capsys, args, "--model", str(ckpt), shape=QUICK)
    assert [p["status"] for p in data["points"]] == ["ok", "ok", "ok"]  # ours, fused SDPA, transformers
    assert data["options"]["shape"]["hidden_size"] == 32 and data["options"]["shape"]["num_layers"] == 2
    code, _, err = run(
        ["benchmark", *QUICK, "--scope", "model", "--model", str(ckpt), "--lengths", "64,129"], capsys
    )
    assert code == 2 and "129 is above the 128 positions" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(
        ["benchmark", *TINY, "--scope", "model", "--model", str(ckpt)], capsys
    )  # TINY has --heads
    assert code == 2 and "--heads, --head-dim cannot be combined with --model" in err


def test_time_budget_marks_timeout_then_skips_longer_lengths(tmp_path, capsys):
    args = "--lengths 32,64,128 --mode forward --attention softmax-eager --time-budget 1e-9 --no-isolate"
    data, out = sweep(tmp_path, capsys, args)
    assert [p["status"] for p in data["points"]] == ["timeout", "skipped", "skipped"]
    assert "budget" in data["points"][0]["message"] and "timeout" in out


@pytest.mark.slow  # a second child process start; the worker test above covers OOM itself
def test_out_of_memory_in_the_child_process_is_reported_and_skips_longer_lengths(tmp_path, capsys):
    # A real allocation failure in the measuring child process (the default): it may allocate 64 MiB, the
    # n=4096 score matrix alone needs 128 MiB. The first point runs in the same child and succeeds.
    args = "--lengths 32,4096,8192 --mode forward --attention softmax-eager --memory-limit 0.0625"
    data, out = sweep(tmp_path, capsys, args)
    assert [p["status"] for p in data["points"]] == ["ok", "OOM", "skipped"]
    assert "allocate" in data["points"][1]["message"]


WORKER_SPEC = dict(scope="layer", mode="forward", n=32, batch=1, device="cpu", dtype="float32", warmup=1, repeats=1,
                   shape=dict(vocab_size=100, hidden_size=16, num_heads=2, num_layers=1, intermediate_size=32),
                   candidate=dict(kind="ours", label="e", mechanism="softmax", settings={"implementation": "eager"}))  # fmt: skip


def test_worker_reports_oom_and_kills_an_overrun():
    """The child process: an allocation above its memory cap is a real out-of-memory failure reported as OOM,
    and a point past its budget (here: no allowance for building the module) is killed."""
    from longattn_cli.bench.worker import Worker

    worker = Worker(memory_limit=64 * 2**20, grace=0.0)
    try:
        assert worker.measure(dict(WORKER_SPEC, time_budget=None))["status"] == "ok"
        oom = worker.measure(
            dict(WORKER_SPEC, n=4096, time_budget=None)
        )  # (1, 2, 4096, 4096) fp32 scores: 128 MiB
        assert oom["status"] == "OOM" and "allocate" in oom["message"]
        assert worker.measure(dict(WORKER_SPEC, time_budget=None))["status"] == "ok"  # the same child goes on
        killed = worker.measure(dict(WORKER_SPEC, time_budget=1e-3))
        assert killed["status"] == "timeout" and "killed after" in killed["message"]
        assert worker.proc is None
    finally:
        worker.close()


@pytest.mark.slow  # three child process starts
def test_worker_restarts_after_a_kill():
    from longattn_cli.bench.worker import Worker

    worker = Worker(grace=0.0)
    try:
        assert worker.measure(dict(WORKER_SPEC, time_budget=1e-3))["status"] == "timeout"
        assert worker.measure(dict(WORKER_SPEC, time_budget=None))["status"] == "ok"
        import threading

        proc = worker.proc
        threading.Timer(1.0, proc.kill).start()  # mid-point, as the kernel's OOM killer would
        # Long enough to be killed mid-point on any machine: 100 steps of an eager layer at 2,048 tokens.
        died = worker.measure(dict(WORKER_SPEC, n=2048, time_budget=None, repeats=100, min_time=60.0))
        assert died["status"] == "OOM" and "signal 9" in died["message"]
        assert worker.measure(dict(WORKER_SPEC, time_budget=None))["status"] == "ok"
    finally:
        worker.close()


def test_cpu_peak_memory_counts_the_score_matrix():
    """The eager layer materialises (B, H, N, N) scores and probabilities: the peak must include them."""
    spec = dict(scope="layer", mode="forward", n=512, batch=1, device="cpu", dtype="float32", warmup=0, repeats=1,
                shape=dict(vocab_size=100, hidden_size=16, num_heads=2, num_layers=1, intermediate_size=32),
                candidate=dict(kind="ours", label="e", mechanism="softmax", settings={"implementation": "eager"}))  # fmt: skip
    result = measure(spec)
    assert result["status"] == "ok"
    scores = 2 * 512 * 512 * 4
    assert result["peak_memory_bytes"] >= 2 * scores


@pytest.mark.parametrize("family,config", [("Yoso", {"use_expectation": True, "hash_code_len": 8}),
                                           ("Nystromformer", {"segment_means_seq_len": 64, "num_landmarks": 16})])  # fmt: skip
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_references_build_and_run(family, config, scope):
    spec = dict(scope=scope, mode="train", n=64, batch=2, device="cpu", dtype="float32", warmup=0, repeats=1,
                shape=dict(vocab_size=100, hidden_size=16, num_heads=2, num_layers=1, intermediate_size=32),
                candidate=dict(kind="reference", label="r", mechanism="x", settings={}, family=family, config=config))  # fmt: skip
    assert measure(spec)["status"] == "ok"


def test_long_document_references_beside_lsg(tmp_path, capsys):
    """Longformer, BigBird and ModernBERT, built from our shape with their own windows and blocks, in both
    scopes and modes; ÷ref pairs LSG with Longformer; BigBird's fall-back to full attention on short inputs
    and each reference's padding are stated in the table and the files."""
    for scope in ("layer", "model"):
        data, out = sweep(
            tmp_path, capsys, f"--scope {scope} --lengths 64,768 --attention lsg-norm --reference"
        )
        got = by_key(data["points"])
        for mode in ("forward", "train"):
            for n in (64, 768):
                for label in ("hf-longformer", "hf-bigbird", "hf-modernbert"):
                    p = got[(mode, n, label)]
                    assert p["status"] == "ok" and p["note"] and p["gflop"] > 0, p
                assert got[(mode, n, "lsg-norm")]["reference"] == "hf-longformer"
        assert "FULL attention" in got[("forward", 64, "hf-bigbird")]["note"]
        assert "block_sparse" in got[("forward", 768, "hf-bigbird")]["note"]
        assert "pads 768 to 1,024" in got[("forward", 768, "hf-longformer")]["note"]
        assert "hf-bigbird: ran FULL attention" in " ".join(out.split())
        rows = list(csv.DictReader((tmp_path / "b.csv").open()))
        assert any(r["label"] == "hf-modernbert" and "sliding-window" in r["note"] for r in rows)


def test_reference_models_by_label(tmp_path, capsys):
    data, _ = sweep(tmp_path, capsys, "--scope model --lengths 64 --attention yoso-lsh --mode forward "
                    "--reference-models hf-modernbert,hf-longformer")  # fmt: skip
    assert {p["label"] for p in data["points"]} == {"yoso-lsh", "hf-modernbert", "hf-longformer"}
    code, _, err = run(["benchmark", *TINY, "--lengths", "32", "--reference-models", "hf-bert"], capsys)
    assert code == 2 and "hf-bert" in err and "hf-longformer" in err


def test_reference_pairing_takes_our_settings():
    """Settings named as in the reference config pass through; absent mechanisms add nothing."""
    yoso = benchmark.Candidate(
        "yoso-lsh",
        "ours",
        "yoso",
        {"hash_code_len": 8, "num_hash": 32, "use_expectation": False, "ours_only": 1},
    )
    nys = benchmark.Candidate(
        "nystrom", "ours", "nystrom", {"num_landmarks": 16, "conv_kernel_size": 65, "pinv_iterations": 6}
    )
    refs = {c.label: c for c in benchmark._references([yoso, nys])}
    assert set(refs) == {"hf-yoso-e", "hf-yoso-lsh", "hf-nystrom", "hf-roberta-sdpa"}
    e = refs["hf-yoso-e"].spec(1024)["config"]
    assert e == {"hash_code_len": 8, "num_hash": 32, "use_expectation": True}
    assert refs["hf-yoso-lsh"].spec(1024)["config"]["use_expectation"] is False
    assert refs["hf-nystrom"].spec(1024)["config"] == {
        "num_landmarks": 16,
        "conv_kernel_size": 65,
        "segment_means_seq_len": 1024,
        "inv_coeff_init_option": False,
    }
    assert "CUDA kernel" in refs["hf-yoso-lsh"].reference.unavailable({}, 1024, "cpu")
    assert "multiple of num_landmarks=16" in refs["hf-nystrom"].reference.unavailable(
        {"num_landmarks": 16}, 1000, "cpu"
    )
    assert refs["hf-nystrom"].reference.unavailable({"num_landmarks": 16}, 1024, "cpu") is None
    sdpa_only = benchmark._references(
        [benchmark.Candidate("softmax-eager", "ours", "softmax", {"implementation": "eager"})]
    )
    assert [c.label for c in sdpa_only] == ["hf-roberta-sdpa"]


def test_train_mode_without_dropout(tmp_path, capsys):
    data, _ = sweep(
        tmp_path,
        capsys,
        "--lengths 32 --mode train --attention softmax-sdpa --reference --dropout 0 --no-isolate",
    )
    assert [p["status"] for p in data["points"]] == ["ok", "ok"] and data["options"]["dropout"] == 0


def test_interrupt_keeps_what_was_measured(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second point: the first is in the files, and the exit code is 130."""
    from longattn_cli.bench import point as benchmark_point

    calls = []

    def measure_then_interrupt(spec):
        calls.append(spec)
        if len(calls) == 3:  # the machine's ceiling, the first point, then Ctrl-C
            raise KeyboardInterrupt
        return measure(spec)

    monkeypatch.setattr(benchmark_point, "measure", measure_then_interrupt)
    out_json = tmp_path / "b.json"
    args = "--lengths 32,64 --mode forward --attention softmax-sdpa --no-isolate".split()
    code, _, err = run(["benchmark", *TINY, *args, "--json", str(out_json)], capsys)
    assert code == 130 and "interrupted; partial results in" in err
    data = json.loads(out_json.read_text())
    assert data["interrupted"] is True and [p["status"] for p in data["points"]] == ["ok"]


def test_a_new_mechanism_is_measured_with_nothing_to_change(tmp_path, capsys, monkeypatch):
    """Any registered mechanism's variants are candidates; --set reaches them; no reference is invented."""
    import dataclasses

    from longattn_cli.attention import base

    @dataclasses.dataclass
    class ToySettings(base.AttentionSettings):
        scale: float = 1.0

    class Toy(base.Attention):  # mean of the values, scaled: linear, and nothing like any real mechanism
        name, Settings = "toy", ToySettings

        @classmethod
        def benchmark_variants(cls):
            return {"toy-a": {"scale": 1.0}, "toy-b": {"scale": 2.0}}

        def forward(self, q, k, v, mask):
            return self.settings.scale * v.mean(dim=2, keepdim=True).expand_as(q)

    monkeypatch.setitem(base._REGISTRY, "toy", Toy)
    monkeypatch.setitem(base.SETTINGS, "toy", ToySettings)
    data, _ = sweep(tmp_path, capsys, "--lengths 32 --attention toy --set scale=3 --reference --no-isolate")
    ours = [p for p in data["points"] if p["kind"] == "ours" and p["label"] != benchmark.FUSED]
    assert sorted({p["label"] for p in ours}) == ["toy-a", "toy-b"]
    assert all(p["status"] == "ok" and p["settings"] == {"scale": 3} for p in ours)
    assert {p["label"] for p in data["points"] if p["kind"] == "reference"} == {"hf-roberta-sdpa"}
    baseline = {"forward": "hf-roberta-sdpa", "train": benchmark.FUSED}
    assert all(p["reference"] is None and p["sdpa_baseline"] == baseline[p["mode"]] for p in ours)


def test_set_overrides_the_selected_mechanism(tmp_path, capsys):
    data, _ = sweep(
        tmp_path,
        capsys,
        "--lengths 32 --mode forward --attention softmax-sdpa --set implementation=eager --no-isolate",
    )
    assert data["points"][0]["settings"] == {"implementation": "eager"}


def test_plot(tmp_path, capsys):
    png = tmp_path / "b.png"
    sweep(tmp_path, capsys, "--lengths 32,64 --attention softmax-sdpa --no-isolate", "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_styles_and_notes(tmp_path):
    """One colour per mechanism, a marker per variant, references dashed in their mechanism's colour; what
    did not run is listed under the figure."""
    from longattn_cli.bench.report import _missing_notes, plot, styles

    labels = [("lsg-norm", "ours", "lsg"), ("lsg-pooling", "ours", "lsg"), ("yoso-lsh", "ours", "yoso"),
              ("yoso-lsh-ebwd", "ours", "yoso"), ("hf-yoso", "reference", "yoso"),
              ("softmax-sdpa", "ours", "softmax"), ("hf-roberta-sdpa", "reference", "softmax")]  # fmt: skip
    points = []
    for n in (512, 1024, 2048):
        for label, kind, mech in labels:
            status = "OOM" if (label, n) == ("hf-yoso", 2048) else "ok"
            points.append(dict(label=label, kind=kind, mechanism=mech, scope="layer", mode="train", n=n,
                               status=status, message="out of memory" if status != "ok" else None,
                               time_s=n * 1e-4, peak_memory_bytes=n * 2**20))  # fmt: skip
    st = styles(points)
    assert st["lsg-norm"]["color"] == st["lsg-pooling"]["color"] != st["yoso-lsh"]["color"]
    assert st["lsg-norm"]["marker"] != st["lsg-pooling"]["marker"]
    assert st["hf-yoso"]["color"] == st["yoso-lsh"]["color"] and st["hf-yoso"]["linestyle"] == "--"
    assert st["yoso-lsh"]["linestyle"] == "-"
    assert len({s["color"] for s in st.values()}) == 3  # lsg, yoso, softmax
    notes = _missing_notes([p for p in points if p["status"] != "ok"])
    assert notes == ["not plotted (did not run):", "  hf-yoso · train · n=2,048: OOM — out of memory"]
    result = {"points": points, "options": {"scope": "layer"}, "machine": {"cpu": "test", "torch": "x"}}
    plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_plot_without_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, _, err = run(["benchmark", *TINY, "--lengths", "32", "--plot", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "pip install matplotlib" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,pattern",
    [
        (
            ["--attention", "bogus"],
            r"unknown attention 'bogus'; valid labels: .*softmax-sdpa.*mechanisms: .*softmax",
        ),
        (["--lengths", "0"], r"--lengths: 0 is not a positive length"),
        (["--lengths", "-64"], r"--lengths: -64 is not a positive length"),
        (["--lengths", "1k"], r"--lengths: '1k' is not an integer"),
        (["--dtype", "float8"], r"unknown dtype 'float8'; valid: float32"),
        (["--device", "tpu"], r"unknown device 'tpu'"),
        (["--scope", "block"], r"unknown scope 'block'; valid: layer, model"),
        (["--mode", "backward"], r"unknown mode 'backward'; valid: forward, train, both"),
        (["--model-size", "huge"], r"unknown model size 'huge'; valid: tiny, small, base, large"),
        (
            ["--attention", "softmax-sdpa", "--set", "nonsense=1"],
            r"--set nonsense: no selected attention has that setting; valid: implementation$",
        ),
        (["--set", "implementation=flash"], r"implementation='flash' is not one of sdpa, eager"),
        (["--repeats", "0"], r"--repeats must be at least 1"),
        (["--batch", "0"], r"--batch must be at least 1"),
        (["--dropout", "1.5"], r"--dropout must be in \[0, 1\), got 1.5"),
        (["--min-time", "-1"], r"--min-time must be at least 0, got -1"),
        (["--model", "/nonexistent/dir", "--scope", "model"], r"does not exist"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(args, pattern, capsys):
    code, out, err = run(["benchmark", *TINY, "--lengths", "32", *args], capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]


def test_table_shows_messages_verbatim():
    """Allocator messages carry brackets; they must print as text, not vanish as rich markup."""
    from rich.console import Console

    from longattn_cli.bench.report import group_table

    point = dict(label="x[1]", kind="ours", scope="layer", mode="forward", n=64, batch=1, status="OOM",
                 message="RuntimeError: [enforce fail at alloc_cpu.cpp:127] can't allocate memory")  # fmt: skip
    console = Console(record=True, width=200)
    console.print(group_table([point]))
    text = console.export_text()
    assert "[enforce fail at alloc_cpu.cpp:127]" in text and "x[1]" in text


def test_list_variants(capsys):
    code, out, _ = run(["benchmark", "--list"], capsys)
    assert code == 0 and "softmax-eager" in out and "implementation=eager" in out and "hf-roberta-sdpa" in out
    assert "FLOPs per head" in out and "8·n·h·d²" in out  # the counts behind %pk


def test_help_lists_benchmark(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "benchmark" in out


def test_tables_fit_80_columns_and_no_cell_wraps():
    """Every column of a train-mode group at 80 columns with the widest values a sweep gives (no cell cut
    short), long messages as footnotes, labels whole."""
    from rich.console import Console

    from longattn_cli.bench.report import group_table, summary_tables

    base = dict(kind="ours", scope="layer", mode="train", n=16384, batch=1)
    ok = dict(base, status="ok", time_s=12.345, time_q1_s=12.1, time_q3_s=13.2, tokens_per_s=19_248.0,
              peak_memory_bytes=12_410 * 2**20, vs_reference_time=0.57, vs_reference_memory=3.81,
              vs_sdpa_time=4.36, vs_sdpa_memory=127.25, ceiling_share=0.043)  # fmt: skip
    points = [
        dict(ok, label="softmax-sdpa-fused"),
        dict(ok, label="lsg-block_stride"),
        dict(ok, label="yoso-lsh-ebwd"),
        dict(
            base,
            label="hf-nystromformer",
            kind="reference",
            status="unavailable",
            message="transformers' Nystromformer needs the length to be a multiple of 64 landmarks (got 16,385)",
        ),  # fmt: skip
        dict(base, label="softmax-eager", status="OOM", message="RuntimeError: can't allocate 12.0 GiB"),
    ]
    console = Console(record=True, width=80)
    console.print(group_table(points))
    for table in summary_tables(points):
        console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    for word in ("softmax-sdpa-fused", "hf-nystromformer", "÷SDPA t/m", "%pk", "4.3", "1.1k", "19k", "12.1G"):
        assert word in text, (word, text)
    for word in ("4.36/127", "n/a [1]", "OOM [2]"):
        assert word in text, (word, text)
    assert "[1] hf-nystromformer unavailable: transformers' Nystromformer needs the length" in text


def test_no_lengths_and_no_candidates_is_the_quick_sweep(tmp_path, capsys, monkeypatch):
    """One variant per mechanism with the references and short timing, then the command of the full sweep."""
    from longattn_cmd import options
    from longattn_cmd.options import BenchmarkOptions

    none = dict.fromkeys(("lengths", "attention", "reference", "repeats", "min_time", "time_budget"))
    quick, is_quick = BenchmarkOptions.from_command_line(none)
    assert is_quick and quick.lengths == [1024, 2048, 4096] and quick.reference
    assert quick.attention == "softmax-sdpa,nystrom,lsg-norm,yoso-lsh-ebwd" and quick.repeats == 2
    full, is_quick = BenchmarkOptions.from_command_line({**none, "lengths": [1024]})
    assert not is_quick and full.repeats == 5 and full.min_time == 1.0 and not full.reference
    assert full.lengths == [1024] and full.attention is None  # every variant
    mine, is_quick = BenchmarkOptions.from_command_line(
        {**none, "attention": "nystrom", "reference": True, "repeats": 2, "min_time": 0.0, "time_budget": 0}
    )
    assert not is_quick and mine.lengths == list(options.DEFAULT_LENGTHS) and mine.repeats == 2
    assert mine.time_budget is None  # 0: no limit

    monkeypatch.setattr(  # the quick sweep itself, on the tiny shape
        BenchmarkOptions.__dataclass_fields__["lengths"], "metadata", {"cli": _quick_lengths([32])}
    )
    code, out, err = run(
        ["benchmark", *TINY, "--mode", "forward", "--no-isolate", "--json", str(tmp_path / "q.json")], capsys
    )
    assert code == 0, err
    data = json.loads((tmp_path / "q.json").read_text())
    labels = {p["label"] for p in data["points"]}
    assert {"softmax-sdpa", "nystrom", "lsg-norm", "yoso-lsh-ebwd", "hf-roberta-sdpa"} <= labels
    assert "lsg-pooling" not in labels and "The full one" in out and options.FULL_COMMAND in out


def _quick_lengths(lengths):
    import dataclasses

    from longattn_cmd.options import BenchmarkOptions

    declared = BenchmarkOptions.__dataclass_fields__["lengths"].metadata["cli"]
    return dataclasses.replace(declared, quick=lengths)


@pytest.mark.parametrize("mechanism", ["softmax", "yoso", "nystrom", "lsg"])
def test_the_layer_scope_times_the_models_own_attention_half(mechanism):
    """What ``--scope layer`` runs equals the attention half inside the model's own layer call (the input of
    the feed-forward), caught with a hook: a change to ``LongAttnLayer.forward`` that the benchmark does not
    follow fails here."""
    from longattn_cli.bench.point import AttentionBlock
    from longattn_cli.models.modeling import LongAttnLayer
    from longattn_cli.testing import tiny_config

    config = tiny_config(mechanism)
    torch.manual_seed(0)
    layer = LongAttnLayer(config).eval()
    x = torch.randn(2, 40, 32)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    seen = []
    hook = layer.intermediate.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        whole = layer(x, mask)
        hook.remove()
        block = AttentionBlock(layer)(x, mask)
        torch.testing.assert_close(block, seen[0], rtol=0, atol=0)
        torch.testing.assert_close(
            layer.output_norm(block + layer.output(layer.act(layer.intermediate(block)))), whole
        )


def test_a_run_never_overwrites_another_without_overwrite(tmp_path, capsys):
    for flag, name in (("--json", "b.json"), ("--csv", "b.csv"), ("--plot", "b.png")):
        path = tmp_path / name
        path.write_text("an earlier run")
        code, _, err = run(["benchmark", *TINY, flag, str(path)], capsys)
        assert code == 2 and f"{flag} {str(path)!r} exists" in err and "--overwrite" in err, err
        assert len(err.strip().splitlines()) == 1 and path.read_text() == "an earlier run"
    code, _, err = run(["benchmark", *TINY, "--json", str(tmp_path / "b.json"), "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "b.json").read_text())["when"]
