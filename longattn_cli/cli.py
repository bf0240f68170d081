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


OVERRIDES_HELP = "Recipe overrides, key=value with dotted keys (they win over the recipe), e.g. training.max_steps=100."
RESUME_HELP = "Continue from 'latest' (the newest checkpoint in the output directory) or a checkpoint directory."


def _train(kind: str, recipe: str | None, overrides: list[str] | None, resume: str | None, show: bool) -> None:
    import logging

    import datasets

    from longattn_cli.config import describe, load_recipe, parse_overrides

    datasets.logging.set_verbosity(logging.CRITICAL)  # bad data becomes one line of ours, not library logs
    datasets.disable_progress_bars()
    values = parse_overrides(overrides)
    if resume:
        values["training.resume"] = resume
    loaded = load_recipe(kind, recipe, values)
    if show:
        print(describe(loaded), end="")
        return
    if kind == "pretrain":
        from longattn_cli.pretrain import run
    else:
        from longattn_cli.finetune import run
    code = run(loaded)
    if code:
        sys.exit(code)


@app.command("pretrain")
def pretrain_cmd(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option(None, "--recipe", "-r", help="YAML recipe (default: the embedded default recipe)."),
    resume: str = typer.Option(None, "--resume", help=RESUME_HELP),
    show: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe (YAML, every key documented) and exit."),
):
    """Pretrain a masked-language model. With no arguments: a small 4,096-token model on CPython's docs, offline.

    Runs in one process; `accelerate launch -m longattn_cli pretrain ...` runs data parallel.
    """
    _train("pretrain", recipe, overrides, resume, show)


@app.command("finetune")
def finetune_cmd(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option(None, "--recipe", "-r", help="YAML recipe (see recipes/finetune/)."),
    resume: str = typer.Option(None, "--resume", help=RESUME_HELP),
    show: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe (YAML, every key documented) and exit."),
):
    """Fine-tune a checkpoint for sequence or token classification (or regression), with evaluation.

    Runs in one process; `accelerate launch -m longattn_cli finetune ...` runs data parallel.
    """
    _train("finetune", recipe, overrides, resume, show)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    from transformers.utils import logging as hf_logging

    import longattn_cli  # noqa: F401  (registers the model family with transformers)

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
    except (typer.Abort, KeyboardInterrupt):
        _fail("aborted", code=130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
