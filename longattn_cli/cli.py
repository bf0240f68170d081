"""The ``longattn`` command line: each command parses its arguments and calls one function."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.26 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as click_errors

from longattn_cli.errors import UserError

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


data_app = typer.Typer(help="Build datasets: LRA ListOps and byte-level text.", no_args_is_help=True)
lra_app = typer.Typer(help="Long Range Arena: compare runs with the published accuracies.", no_args_is_help=True)
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

    lra_cli.listops(out, train, validation, test, min_length, max_length, max_depth, max_args, seed)


@data_app.command("text")
def data_text_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Output directory (jsonl splits + tokenizer/)."),
    source: str = typer.Option(None, help="Local aclImdb folder or train/test files; default: the hub's stanfordnlp/imdb."),
):
    """Prepare the LRA Text task: IMDB reviews as bytes with a byte-level tokenizer."""
    from longattn_cli.lra import cli as lra_cli

    lra_cli.text(out, source)


@lra_app.command("report")
def lra_report_cmd(
    runs: list[str] = typer.Argument(..., help="Output directories of `longattn finetune` LRA runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Test accuracies of LRA runs next to the published ones, with training time and peak memory."""
    from longattn_cli.lra.report import report

    report(runs, as_json)


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
    except click_errors.Abort:
        _fail("aborted", code=130)
    except click_errors.Exit as exc:
        sys.exit(exc.exit_code)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
