"""The ``longattn`` command line: each command parses its arguments and calls one function."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.26 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as click_errors

from longattn_cli.errors import UserError

# typer's own copy of click has neither Abort nor Exit; an `except` naming a missing one would raise
# AttributeError on every exception that reaches it (Ctrl-C, sys.exit) instead of handling it.
_ABORT = tuple(getattr(click_errors, n) for n in ("Abort",) if hasattr(click_errors, n))
_EXIT = tuple(getattr(click_errors, n) for n in ("Exit",) if hasattr(click_errors, n))

app = typer.Typer(
    name="longattn",
    help="Pretrain, convert, fine-tune, benchmark and query encoders with efficient long-sequence attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Pretrain, convert, fine-tune, benchmark and query encoders with efficient long-sequence attention."""


ATTENTION_HELP = "Run with this attention mechanism instead of the checkpoint's (softmax, yoso, nystrom, lsg)."
SET_HELP = "Override an attention setting, key=value (repeatable), e.g. --set use_expectation=false."


@app.command("fill-mask")
def fill_mask_cmd(
    texts: list[str] = typer.Argument(..., help="Texts containing the tokenizer's mask token (<mask> or [MASK])."),
    model: str = typer.Option("roberta-base", "--model", "-m", help="Checkpoint directory or hub id."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Predictions per mask."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the fill-mask pipeline's fields) instead of a table."),
    attention: str = typer.Option(None, "--attention", help=ATTENTION_HELP),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
):
    """Predict the masked tokens of one or more texts."""
    from longattn_cli import fill_mask
    from longattn_cli.config import parse_overrides

    results = fill_mask.predict(
        texts, model, top_k, attention=attention, attention_settings=parse_overrides(settings), device=device, dtype=dtype
    )
    fill_mask.render(results, as_json)


@app.command("benchmark")
def benchmark_cmd(
    scope: str = typer.Option("layer", help="layer (one attention sublayer: q/k/v, mechanism, output, norm) or model (whole encoder)."),
    mode: str = typer.Option("both", help="forward (inference), train (forward+backward) or both."),
    lengths: str = typer.Option(None, help="Comma-separated sequence lengths (default: 512,1024,...,16384)."),
    attention: str = typer.Option(None, "--attention", help="Comma-separated variant labels or mechanism names (default: every registered variant)."),
    settings: list[str] = typer.Option(None, "--set", help="Override a setting of every selected mechanism that has it, key=value (repeatable)."),
    reference: bool = typer.Option(False, "--reference", help="Also measure transformers' RoBERTa (sdpa), YOSO and Nyströmformer where they run."),
    batch: int = typer.Option(1, help="Batch size."),
    heads: int = typer.Option(None, help="Attention heads (default: the model size's)."),
    head_dim: int = typer.Option(None, help="Size of one head (default: the model size's)."),
    layers: int = typer.Option(None, help="Encoder layers for --scope model (default: the model size's)."),
    model_size: str = typer.Option("base", help="Shape preset: tiny, small, base (12 layers, 768 wide, 12 heads) or large."),
    model: str = typer.Option(None, "--model", "-m", help="Measure this checkpoint's shape and weights (directory or hub id) instead of a preset."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dropout: float = typer.Option(0.1, help="Dropout on hidden states and attention probabilities in train mode (ours and references)."),
    threads: int = typer.Option(None, help="CPU threads for torch (default: torch's)."),
    warmup: int = typer.Option(1, help="Untimed steps before timing."),
    repeats: int = typer.Option(5, help="Timed steps per point, at least (median and quartiles reported)."),
    min_time: float = typer.Option(1.0, help="Repeat short steps until the timed ones add up to this many seconds (at most 200 steps)."),
    time_budget: float = typer.Option(120.0, help="Seconds a point may take (0: no limit); longer lengths of a mechanism that runs over are skipped."),
    memory_limit: float = typer.Option(None, help="GB a point may allocate on CPU before it counts as OOM (default: 90% of free memory)."),
    isolate: bool = typer.Option(True, help="Measure in a child process that an OOM or overrun cannot take down (--no-isolate: in this one)."),
    json_path: str = typer.Option(None, "--json", help="Write every measurement and the machine to this JSON file."),
    csv_path: str = typer.Option(None, "--csv", help="Write every measurement (one row per point) to this CSV file."),
    plot_path: str = typer.Option(None, "--plot", help="Plot time and memory against length (log-log) to this PNG (needs matplotlib)."),
    seed: int = typer.Option(0, help="Seed for weights and inputs."),
    list_variants: bool = typer.Option(False, "--list", help="List the variant labels, their settings and references, and exit."),
):
    """Time and peak memory of every attention mechanism against sequence length."""
    from longattn_cli import benchmark
    from longattn_cli.config import parse_overrides

    if list_variants:
        benchmark.list_candidates()
        return

    opts = benchmark.BenchmarkOptions(
        scope=scope, mode=mode, lengths=benchmark.parse_lengths(lengths), attention=attention,
        settings=parse_overrides(settings), reference=reference, batch=batch, heads=heads, head_dim=head_dim,
        layers=layers, model_size=model_size, model=model, dtype=dtype, device=device, dropout=dropout, threads=threads,
        warmup=warmup, repeats=repeats, min_time=min_time, time_budget=time_budget or None, memory_limit_gb=memory_limit,
        isolate=isolate, seed=seed,
    )  # fmt: skip
    try:
        benchmark.run(opts, json_path=json_path, csv_path=csv_path, plot_path=plot_path)
    except KeyboardInterrupt:
        written = ", ".join(p for p in (json_path, csv_path, plot_path) if p)
        print(f"interrupted{'; partial results in ' + written if written else ''}", file=sys.stderr)
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    import longattn_cli  # noqa: F401  (registers the model family with transformers)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our own messages say what matters; keep the library's chatter out
    hf_logging.disable_progress_bar()

    try:
        app(args=argv, prog_name="longattn", standalone_mode=False)
    except UserError as exc:
        _fail(str(exc))
    except click_errors.NoArgsIsHelpError:
        sys.exit(0)
    except click_errors.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        _fail(where + exc.format_message())
    except click_errors.ClickException as exc:
        _fail(exc.format_message())
    except (KeyboardInterrupt, *_ABORT):
        _fail("aborted", code=130)
    except _EXIT as exc:
        sys.exit(exc.exit_code)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
