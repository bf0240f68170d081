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


LSG_FLAG_HELP = "LSG setting (with --attention lsg); default: the source's, else the mechanism's"


@app.command("convert")
def convert_cmd(
    source: str = typer.Argument(..., help="Checkpoint directory or hub id: RoBERTa, BERT, XLM-RoBERTa, CamemBERT, LSG or longattn."),
    max_length: int = typer.Option(4096, "--max-length", help="New longest input in tokens; must exceed the source's."),
    out: str = typer.Option(None, "--out", "-o", help="Output directory (default: <source name>-<max length>)."),
    attention: str = typer.Option("lsg", "--attention", help="Attention of the converted model: lsg, softmax, or any registered one."),
    settings: list[str] = typer.Option(None, "--set", help="Attention setting key=value (repeatable), e.g. --set adaptive=false."),
    block_size: int = typer.Option(None, "--block-size", help=LSG_FLAG_HELP + " (128)."),
    sparse_block_size: int = typer.Option(None, "--sparse-block-size", help=LSG_FLAG_HELP + " (128)."),
    sparsity_factor: int = typer.Option(None, "--sparsity-factor", help=LSG_FLAG_HELP + " (2)."),
    sparsity_type: str = typer.Option(None, "--sparsity-type", help=LSG_FLAG_HELP + ": norm, pooling, lsh, stride, block_stride, bos_pooling or none (norm)."),
    num_global_tokens: int = typer.Option(None, "--num-global-tokens", help=LSG_FLAG_HELP + " (1)."),
    random_global_init: bool = typer.Option(False, "--random-global-init", help="Draw global tokens from a Gaussian fitted to the word embeddings instead of BOS/mask."),
    global_positional_stride: int = typer.Option(64, "--global-positional-stride", help="Position rows between consecutive global tokens."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random draw."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
    check: bool = typer.Option(False, "--check", help="Compare with the source on a short text; time the long model at --max-length."),
    device: str = typer.Option("auto", help="Device for --check: auto, cpu, cuda or cuda:N."),
):
    """Make a RoBERTa/BERT-family model long: tiled positions, LSG (or other) attention, global tokens."""
    from rich.console import Console

    from longattn_cli import convert
    from longattn_cli.config import parse_overrides
    from longattn_cli.errors import UserError

    values = parse_overrides(settings)
    flags = {
        "block_size": block_size,
        "sparse_block_size": sparse_block_size,
        "sparsity_factor": sparsity_factor,
        "sparsity_type": sparsity_type,
        "num_global_tokens": num_global_tokens,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if given and attention != "lsg":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise UserError(f"{flag} is an LSG setting; it needs --attention lsg (got --attention {attention})")
    values.update(given)
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers' "Writing model shards" bar would break the status line
    console = Console(stderr=True)
    with console.status(f"converting {source} to {max_length} tokens with {attention} attention..."):
        path, src, model, tok = convert.convert(
            source, max_length, out, attention, values, random_global_init, global_positional_stride, seed, overwrite
        )
    console.print(f"[green]saved[/] {path} ({attention}, {max_length} tokens, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    if check:
        with console.status("checking..."):
            result = convert.check(src, model, tok, max_length, device)
        convert.render_check(result, max_length)


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
