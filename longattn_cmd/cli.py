"""The ``longattn`` command line: each command parses its arguments and calls one function."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import typer

try:  # typer >= 0.26 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as click_errors

from longattn_cmd.declare import command, given, option
from longattn_cmd.errors import UserError
from longattn_cmd.options import FULL_COMMAND, BenchmarkFiles, BenchmarkOptions, ConvertOptions

app = typer.Typer(
    name="longattn",
    help="Pretrain, convert, fine-tune, benchmark and query encoders with efficient long-sequence attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _overrides(help: str):
    """The trailing ``key=value`` arguments of a command (optional, repeatable)."""
    return typer.Argument(None, help=help, show_default=False)


@app.callback()
def _root() -> None:
    """Pretrain, convert, fine-tune, benchmark and query encoders with efficient long-sequence attention."""


ATTENTION_HELP = (
    "Run with this attention mechanism instead of the checkpoint's (softmax, yoso, nystrom, lsg)."
)
SET_HELP = "Override an attention setting, key=value (repeatable), e.g. --set use_expectation=false."


@app.command("fill-mask")
def fill_mask_cmd(
    texts: list[str] = typer.Argument(
        ..., help="Texts containing the tokenizer's mask token (<mask> or [MASK])."
    ),
    model: str = typer.Option("roberta-base", "--model", "-m", help="Checkpoint directory or hub id."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Predictions per mask."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (the fill-mask pipeline's fields) instead of a table."
    ),
    attention: str = typer.Option(None, "--attention", help=ATTENTION_HELP),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
):
    """Predict the masked tokens of one or more texts."""
    from longattn_cli import fill_mask
    from longattn_cli.training.config import parse_overrides

    results = fill_mask.predict(
        texts,
        model,
        top_k,
        attention=attention,
        attention_settings=parse_overrides(settings),
        device=device,
        dtype=dtype,
    )
    fill_mask.render(results, as_json)


data_app = typer.Typer(help="Build datasets: LRA ListOps and byte-level text.", no_args_is_help=True)
lra_app = typer.Typer(
    help="Long Range Arena: train every mechanism on a task, and compare runs with the published accuracies.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(lra_app, name="lra")


@data_app.command("listops")
def data_listops_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Output directory (jsonl splits + tokenizer/)."),
    train: int = typer.Option(96_000, help="Training samples."),
    validation: int = typer.Option(2_000, help="Validation samples."),
    test: int = typer.Option(2_000, help="Test samples."),
    min_length: int = typer.Option(500, help="Keep trees with more tokens than this."),
    max_length: int = typer.Option(2_000, help="Keep trees with fewer tokens than this."),
    max_depth: int = typer.Option(10, help="Deepest nesting."),
    max_args: int = typer.Option(10, help="Most arguments of one operator."),
    seed: int = typer.Option(0, help="Generator seed: the same arguments always give the same data."),
):
    """Generate the LRA ListOps task (unique trees, deterministic under --seed)."""
    from longattn_cli.lra import cli as lra_cli

    lra_cli.listops(
        out, train=train, validation=validation, test=test, min_length=min_length, max_length=max_length,
        max_depth=max_depth, max_args=max_args, seed=seed,
    )  # fmt: skip


@data_app.command("text")
def data_text_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Output directory (jsonl splits + tokenizer/)."),
    source: str = typer.Option(
        None, help="Local aclImdb folder or train/test files; default: the hub's stanfordnlp/imdb."
    ),
):
    """Prepare the LRA Text task: IMDB reviews as bytes with a byte-level tokenizer."""
    from longattn_cli.lra import cli as lra_cli

    lra_cli.text(out, source)


@lra_app.command("report")
def lra_report_cmd(
    runs: list[str] = typer.Argument(..., help="Output directories of `longattn finetune` LRA runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    save: str = typer.Option(
        None, "--save", help="Also write the table to SAVE.txt and the rows to SAVE.json."
    ),
):
    """Test accuracies of LRA runs next to the published ones, with training time and peak memory."""
    from longattn_cli.lra.report import report

    report(runs, as_json, save)


@lra_app.command("run")
def lra_run_cmd(
    task: str = typer.Argument(..., help="listops or text."),
    overrides: list[str] = _overrides(
        "Recipe overrides for every run, key=value, e.g. training.max_steps=100."
    ),
    scale: str = typer.Option(
        "cpu",
        help="cpu (recipes/lra/cpu/: each run under 20 minutes on 2 cores) or paper (the papers' setting).",
    ),
    attention: str = typer.Option(
        None, help="Comma-separated mechanisms; default: softmax,yoso,nystrom,lsg."
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Where the runs go (OUT/TASK-MECHANISM); default runs/lra-SCALE."
    ),
    source: str = typer.Option(
        None,
        help="text: a local aclImdb folder or train/test files, when data/lra/text is missing and offline.",
    ),
    recipes: str = typer.Option(None, help="Folder holding lra/ (default: the recipes of this checkout)."),
    data: str = typer.Option(
        None, help="Read (or build) the task's data here instead of the recipes' data/lra/... folder."
    ),
):
    """Train every mechanism on an LRA task in turn (data built if missing), then print lra report's table.

    `longattn compare` over the LRA recipes: resumable, finished runs are skipped, an interrupted one continues
    from its last checkpoint. Also writes OUT/TASK.txt and OUT/TASK.json, and compare's table and plot.
    """
    from longattn_cli.lra.run import run

    code = run(
        task, scale=scale, attention=attention, out=out, overrides=overrides, text_source=source, recipes=recipes,
        data=data,
    )  # fmt: skip
    if code:
        sys.exit(code)


def benchmark_cmd(**values) -> None:
    """Time and peak memory of every attention mechanism against sequence length."""
    from longattn_cli.bench import sweep

    files = BenchmarkFiles(**given(values, BenchmarkFiles))
    files.check()
    if files.list_variants:
        from longattn_cli.bench.candidates import list_candidates

        list_candidates()
        return
    opts, quick = BenchmarkOptions.from_command_line(values)
    try:
        sweep.run(opts, json_path=files.json_path, csv_path=files.csv_path, plot_path=files.plot_path)
        if quick:
            print(f"This was the quick sweep. The full one (much longer): {FULL_COMMAND}")
    except KeyboardInterrupt:
        written = ", ".join(p for p in (files.json_path, files.csv_path, files.plot_path) if p)
        print(f"interrupted{'; partial results in ' + written if written else ''}", file=sys.stderr)
        sys.exit(130)


app.command("benchmark")(command(benchmark_cmd, BenchmarkOptions, BenchmarkFiles))


def convert_cmd(check: bool, device: str, **values) -> None:
    """Make a RoBERTa/BERT-family model long: tiled positions, LSG (or other) attention, global tokens."""
    from huggingface_hub.utils import disable_progress_bars
    from rich.console import Console

    from longattn_cli.models import convert

    opts = ConvertOptions(**given(values, ConvertOptions))
    opts.check()
    disable_progress_bars()  # transformers' "Writing model shards" bar would break the status line
    console = Console(stderr=True)
    with console.status(
        f"converting {opts.source} to {opts.max_length} tokens with {opts.attention} attention..."
    ):
        path, src, model, tok = convert.convert_with(opts)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    console.print(
        f"[green]saved[/] {path} ({opts.attention}, {opts.max_length} tokens, {size:.1f}M parameters)"
    )
    if check:
        with console.status("checking..."):
            result = convert.check(src, model, tok, opts.max_length, device)
        convert.render_check(result, opts.max_length)


@dataclasses.dataclass
class ConvertCheck:
    """``longattn convert --check``: what to compare after converting."""

    check: bool = option(
        False, "Compare with the source on a short text; time the long model at --max-length.", "--check"
    )
    device: str = option("auto", "Device for --check: auto, cpu, cuda or cuda:N.")


app.command("convert")(command(convert_cmd, ConvertOptions, ConvertCheck))


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Argument(
        ..., help="Fine-tuned checkpoint directory (longattn finetune's output) or hub id."
    ),
    overrides: list[str] = _overrides(
        "finetune's data.* keys, key=value (default: the model's own recipe's), e.g. data.split=test."
    ),
    data: str = typer.Option(
        ...,
        "--data",
        "-d",
        help="Labelled data: a file, a folder of split files, a saved dataset or a hub id.",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Examples per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Score a fine-tuned model on labelled data, with finetune's metrics (table or --json).

    Runs in one process; `accelerate launch -m longattn_cmd evaluate ...` shares the batches among processes.
    """
    from longattn_cli.inference.evaluate import evaluate, render
    from longattn_cli.training.config import parse_overrides

    result = evaluate(model, data, parse_overrides(overrides), batch_size)
    if os.environ.get("RANK", "0") == "0":
        render(result, as_json)


@app.command("embed")
def embed_cmd(
    model: str = typer.Argument(..., help="Checkpoint directory or hub id (its encoder is used, any head)."),
    overrides: list[str] = _overrides("finetune's data.* keys, key=value, e.g. data.text_column=abstract."),
    data: str = typer.Option(
        None, "--data", "-d", help="Documents: a file, a folder of split files, a saved dataset or a hub id."
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Output file: .npy (one row per document) or .parquet."
    ),
    pooling: str = typer.Option("mean", help="mean (over real tokens), cls (first token) or max."),
    normalize: bool = typer.Option(False, "--normalize", help="Scale every vector to unit length."),
    batch_size: int = typer.Option(16, "--batch-size", help="Documents per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    sentence_transformers: bool = typer.Option(
        False,
        "--sentence-transformers",
        help="Also write the sentence-transformers files into MODEL (a local folder) with this pooling, so "
        "that SentenceTransformer(MODEL).encode(texts) gives the same vectors.",
    ),
):
    """One vector per document: mean over its real tokens by default (--pooling, --normalize)."""
    from longattn_cli.inference import embed
    from longattn_cli.training.config import parse_overrides

    if not data and not sentence_transformers:
        raise UserError(
            "give --data and --out to embed documents, or --sentence-transformers to write its files"
        )
    if data and not out:
        raise UserError("--out is missing: where the vectors go (a .npy or .parquet file)")
    if sentence_transformers:
        if not Path(model).is_dir():
            raise UserError(
                f"--sentence-transformers writes into MODEL, which must be a local folder; got {model!r}"
            )
        from longattn_cli.models.sentence import save_sentence_transformers

        save_sentence_transformers(model, pooling, normalize)
        print(f"wrote the sentence-transformers files into {model} ({pooling} pooling)", file=sys.stderr)
    if data:
        done = embed.embed(
            model, data, out, pooling, normalize, batch_size, parse_overrides(overrides), overwrite
        )
        print(
            f"{done['documents']:,} vectors of {done['dimension']} ({pooling}) -> {done['out']}",
            file=sys.stderr,
        )


@app.command("predict")
def predict_cmd(
    model: str = typer.Argument(
        ..., help="Fine-tuned checkpoint directory (longattn finetune's output) or hub id."
    ),
    overrides: list[str] = _overrides("finetune's data.* keys, key=value (default: the model's recipe's)."),
    data: str = typer.Option(
        ..., "--data", "-d", help="Examples: a file, a folder of split files, a saved dataset or a hub id."
    ),
    out: str = typer.Option(..., "--out", "-o", help="Output file: .jsonl, .csv or .parquet."),
    batch_size: int = typer.Option(16, "--batch-size", help="Examples per forward pass."),
    resume: bool = typer.Option(False, "--resume", help="Continue an output file after the rows it holds."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
):
    """Labels, scores and every class's probability for each example (each word for token tasks), in input order.

    Ctrl-C leaves a valid file of the rows done; --resume continues after them.
    """
    from longattn_cli.inference.predict import predict_file
    from longattn_cli.training.config import parse_overrides

    done = predict_file(model, data, out, batch_size, parse_overrides(overrides), resume, overwrite)
    if done["stopped"]:
        print(f"stopped after {done['rows']:,} rows in {done['out']}; --resume continues", file=sys.stderr)
        sys.exit(130)
    print(f"{done['rows'] - done['skipped']:,} rows -> {done['out']}", file=sys.stderr)


@app.command("compare")
def compare_cmd(
    overrides: list[str] = _overrides("Overrides for every run, key=value, e.g. training.max_steps=500."),
    recipe: str = typer.Option(
        ...,
        "--recipe",
        "-r",
        help="Your fine-tuning recipe (YAML); with {attention} in its path, one recipe file per mechanism.",
    ),
    attention: str = typer.Option(
        None, "--attention", help="Comma-separated mechanisms; default: softmax,yoso,nystrom,lsg."
    ),
    sources: str = typer.Option(
        None,
        "--sources",
        help="Comma-separated baseline checkpoints run with the same recipe and their own attention, e.g. "
        "allenai/longformer-base-4096.",
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Where the runs go (OUT/NAME); default runs/compare-RECIPE."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of the table."),
):
    """Fine-tune one recipe with each mechanism (and baseline checkpoint) in turn; one table and one plot.

    Each run is its own process. Resumable: finished runs are skipped, an interrupted one continues from its
    last checkpoint. Writes OUT/compare.txt, OUT/compare.json and OUT/compare.png.
    """
    from longattn_cli.training.compare import compare

    code = compare(recipe, attention, sources, out, overrides, as_json)
    if code:
        sys.exit(code)


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="Checkpoint directory or hub id; the graph computes its own head."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for model.onnx, its tokenizer and export.json."),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format for now)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset of the graph."),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
    check: bool = typer.Option(
        False,
        "--check",
        help="Compare onnxruntime with torch at 17, 157 and 1,021 tokens (padded rows included) before "
        "writing; a difference above 1e-4 writes nothing.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a folder that holds files."),
    as_json: bool = typer.Option(False, "--json", help="Print export.json instead of a summary."),
):
    """Export a model to ONNX: dynamic batch and length, its tokenizer beside it (pip install 'longattn[onnx]')."""
    from longattn_cli.training.config import parse_overrides

    if format != "onnx":
        raise UserError(f"--format {format!r} is not supported; valid: onnx")
    if opset < 18:
        raise UserError(f"--opset {opset}: the exporter needs 18 or newer")
    from rich.console import Console

    from longattn_cli.models import onnx

    console = Console(stderr=True)
    with console.status(f"exporting {model} to ONNX (opset {opset})..."):
        report = onnx.export(
            model,
            out,
            attention_settings=parse_overrides(settings),
            opset=opset,
            overwrite=overwrite,
            check=check,
        )
    if as_json:
        print(json.dumps(report, indent=2))
        return
    onnx.render(report, console)


OVERRIDES_HELP = (
    "Recipe overrides, key=value with dotted keys (they win over the recipe), e.g. training.max_steps=100."
)
RESUME_HELP = (
    "Continue from 'latest' (the newest checkpoint in the output directory) or a checkpoint directory."
)


def _train(
    kind: str, recipe: str | None, overrides: list[str] | None, resume: str | None, show: bool
) -> None:
    import os

    from longattn_cli.training.config import describe, load_recipe, parse_overrides

    # Bad data becomes one line of ours, not library logs (read when datasets is imported, by the run).
    os.environ.setdefault("DATASETS_VERBOSITY", "critical")
    if "datasets" in sys.modules:
        import logging

        import datasets

        datasets.logging.set_verbosity(logging.CRITICAL)
    values = parse_overrides(overrides)
    if resume:
        values["training.resume"] = resume
    loaded = load_recipe(kind, recipe, values, complete=not show)
    if show:
        print(describe(loaded), end="")
        return
    if kind == "pretrain":
        from longattn_cli.training.pretrain import run
    else:
        from longattn_cli.training.finetune import run
    code = run(loaded)
    if code:
        sys.exit(code)


@app.command("pretrain")
def pretrain_cmd(
    overrides: list[str] = _overrides(OVERRIDES_HELP),
    recipe: str = typer.Option(
        None, "--recipe", "-r", help="YAML recipe (default: the embedded default recipe)."
    ),
    resume: str = typer.Option(None, "--resume", help=RESUME_HELP),
    show: bool = typer.Option(
        False, "--print-recipe", help="Print the resolved recipe (YAML, every key documented) and exit."
    ),
):
    """Pretrain a masked-language model. With no arguments: a small 4,096-token model on CPython's docs, offline.

    Runs in one process; `accelerate launch -m longattn_cmd pretrain ...` runs data parallel.
    """
    _train("pretrain", recipe, overrides, resume, show)


@app.command("finetune")
def finetune_cmd(
    overrides: list[str] = _overrides(OVERRIDES_HELP),
    recipe: str = typer.Option(None, "--recipe", "-r", help="YAML recipe (see recipes/finetune/)."),
    resume: str = typer.Option(None, "--resume", help=RESUME_HELP),
    show: bool = typer.Option(
        False, "--print-recipe", help="Print the resolved recipe (YAML, every key documented) and exit."
    ),
):
    """Fine-tune a checkpoint for sequence or token classification (or regression), with evaluation.

    Runs in one process; `accelerate launch -m longattn_cmd finetune ...` runs data parallel.
    """
    _train("finetune", recipe, overrides, resume, show)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2, Ctrl-C exit code 130."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    _note_interrupts(console=argv is None)
    try:
        _run(argv)
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(argv: list[str] | None) -> None:
    try:
        quiet_libraries()
        # Outside standalone mode typer returns, rather than raises, an exit code: Ctrl-C comes back as 130.
        code = app(args=argv, prog_name="longattn", standalone_mode=False)
    except click_errors.NoArgsIsHelpError:
        sys.exit(0)
    except click_errors.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        _fail(where + exc.format_message())
    except click_errors.ClickException as exc:
        _fail(exc.format_message())
    except (typer.Abort, KeyboardInterrupt):
        _fail("aborted", code=130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except UserError as exc:
        if exc.everywhere and os.environ.get("RANK", "0") != "0":  # the main process says it for all
            sys.exit(2)
        _fail(str(exc))
    except Exception as exc:
        # Ctrl-C inside an import that wraps what it catches (transformers' lazy modules).
        if _interrupted(exc):
            _fail("aborted", code=130)
        raise
    if code == 130:
        _fail("aborted", code=130)
    if isinstance(code, int) and code:
        sys.exit(code)


_SIGINT_SEEN = False


def _note_interrupts(console: bool) -> None:
    """Ctrl-C while a command starts: one line, exit code 130.

    From the console the process ends at once: a KeyboardInterrupt raised inside torch's or transformers'
    imports can abort the process from C++ or be turned into another error by a lazy module. Commands that
    keep partial work on Ctrl-C (training, the benchmark) install their own handler once they run. In
    process (tests), KeyboardInterrupt is raised as usual and remembered.
    """
    import signal

    global _SIGINT_SEEN
    _SIGINT_SEEN = False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # ignored (a background job) or someone else's handler: leave it

    def handler(signum, frame):
        global _SIGINT_SEEN
        _SIGINT_SEEN = True
        if console:
            import os

            os.write(2, b"error: aborted\n")
            os._exit(130)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, handler)


def _interrupted(exc: BaseException) -> bool:
    if _SIGINT_SEEN:
        return True
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def quiet_libraries() -> None:
    """Our own messages say what matters: no library chatter or progress bars of theirs.

    Set through the environment, read when the libraries are first imported (later, by the command that
    needs them), so that this costs nothing at start-up; applied directly where they are already loaded.
    """
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
