"""``longattn convert``: turn a short encoder (RoBERTa, BERT, XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA, ALBERT,
or an LSG / longattn model) into a long one with LSG (or any registered) attention.

The rules are the published LSG converter's (ccdv-ai/convert_checkpoint_to_lsg):

* position embeddings are tiled up to the new length; RoBERTa-style tables keep their first
  ``position_offset`` rows (padding positions) and tile the rest, BERT tables tile whole;
* ``max_position_embeddings`` and the tokenizer's ``model_max_length`` follow the new length;
* global token ``i`` starts as the position row picked by ``global_positional_stride`` (rows 0, stride,
  2·stride, ... then 1, stride + 1, ...) plus the BOS/CLS word embedding for the first and the mask word
  embedding for the others (plus token type 0 for BERT); ``--random-global-init`` draws the word part from a
  Gaussian fitted to the word embeddings instead (the first stays BOS/CLS).

Global tokens a source already has (an LSG model made longer again) are kept. The output is written to a
temporary directory next to ``--out`` and renamed into place, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from longattn_cli.attention import get_mechanism
from longattn_cli.devices import peak_rss_mb
from longattn_cli.errors import UserError
from longattn_cli.hub import resolve
from longattn_cli.models.checkpoints import load_model
from longattn_cli.models.modeling import HEADS, LongAttnConfig
from longattn_cli.models.sentence import save_sentence_transformers, sentence_transformers_pooling
from longattn_cli.models.tokenizer import load_tokenizer
from longattn_cli.models.weights import write_folder
from longattn_cmd.options import ConvertOptions

POSITION_KEY = "embeddings.position_embeddings.weight"
GLOBAL_KEY = "embeddings.global_embeddings.weight"


def convert(
    source: str, max_length: int = ConvertOptions.max_length, out: str | Path | None = None, **options
):
    """Convert ``source`` into a model taking ``max_length`` tokens and save it to ``out`` (the Python form
    of ``longattn convert``).

    Args:
        source: checkpoint directory or hub id (RoBERTa, BERT, XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA,
            ALBERT, LSG or longattn).
        max_length: the new longest input, in tokens (special tokens included).
        out: output directory; defaults to ``<source name>-<max_length>``.
        options: the other fields of :class:`~longattn_cmd.options.ConvertOptions` (``attention``,
            ``random_global_init``, ``global_positional_stride``, ``seed``, ``overwrite``, the LSG settings),
            and ``attention_settings``, the mechanism's settings (for a source already using ``attention``,
            its own settings are kept and these update them).

    Returns:
        ``(out_path, source_model, converted_model, tokenizer)``, models in eval mode on CPU.
    """
    settings = dict(options.pop("attention_settings", None) or {})
    out = None if out is None else str(out)
    return convert_with(
        ConvertOptions(source=source, max_length=max_length, out=out, settings=settings, **options)
    )


def convert_with(opts: ConvertOptions):
    """:func:`convert` with its options as one object (what the command line builds)."""
    opts.check()
    source, max_length = opts.source, opts.max_length
    out = Path(opts.out) if opts.out is not None else Path(f"{Path(source.rstrip('/')).name}-{max_length}")
    if out.exists() and not opts.overwrite and (out.is_file() or any(out.iterdir())):
        raise UserError(f"output {str(out)!r} exists and is not empty; pass --overwrite to replace it")
    get_mechanism(opts.attention)  # an unknown name fails before any loading
    stride = opts.global_positional_stride
    if stride < 1 or 512 % stride:
        raise UserError(f"--global-positional-stride={stride} must divide 512 (1, 2, 4, ..., 512)")
    src = load_model(source)
    tokenizer = load_tokenizer(source)
    if max_length <= src.config.max_sequence_length:
        raise UserError(
            f"--max-length={max_length} is not above the source's length ({src.config.max_sequence_length} "
            "tokens); convert makes models longer"
        )
    config = new_config(src.config, max_length, opts.attention, opts.attention_settings())
    torch.manual_seed(opts.seed)
    model = _long_model(src, tokenizer, config, opts)
    tokenizer.model_max_length = max_length
    sentence = sentence_transformers_pooling(
        resolve(source)
    )  # a sentence-transformers source keeps its pooling
    save_atomically(
        model, tokenizer, out, (lambda d: save_sentence_transformers(d, *sentence)) if sentence else None
    )
    return out, src, model, tokenizer


def _long_model(src, tokenizer, config: LongAttnConfig, opts: ConvertOptions):
    """The source's head and weights in the new config: positions tiled, global tokens seeded."""
    head = next(name for name, cls in HEADS.items() if isinstance(src, cls))
    model = HEADS[head](config).eval()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    prefix = "" if head == "base" else "longattn."
    state[prefix + POSITION_KEY] = tile_positions(
        state[prefix + POSITION_KEY], src.config.position_offset, opts.max_length
    )
    state.pop(prefix + GLOBAL_KEY, None)
    if config.num_global_tokens:
        state[prefix + GLOBAL_KEY] = init_global_tokens(
            src, tokenizer, config.num_global_tokens, opts.global_positional_stride, opts.random_global_init
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in (getattr(model, "_tied_weights_keys", None) or {})]
    if missing or unexpected:  # pragma: no cover - a bug, not a user mistake
        raise RuntimeError(f"conversion left weights unmatched: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def new_config(
    old: LongAttnConfig, max_length: int, attention: str, settings: dict[str, Any] | None
) -> LongAttnConfig:
    """The source's config with the new length and attention (validated)."""
    fields = old.to_dict()
    for k in ("architectures", "_name_or_path", "transformers_version", "model_type", "dtype", "torch_dtype"):
        fields.pop(k, None)
    keep = dict(old.attention_settings) if attention == old.attention else {}
    fields.update(
        max_position_embeddings=max_length + old.position_offset,
        attention=attention,
        attention_settings=keep | dict(settings or {}),
    )
    return LongAttnConfig(**fields)


def tile_positions(rows: torch.Tensor, offset: int, max_length: int) -> torch.Tensor:
    """Position table for ``max_length`` tokens: the first ``offset`` rows kept, the others repeated."""
    body = rows[offset:]
    reps = math.ceil(max_length / body.shape[0])
    return torch.cat([rows[:offset], body.repeat(reps, 1)[:max_length]], dim=0)


def global_position_rows(positions: torch.Tensor, count: int, stride: int) -> torch.Tensor:
    """The position rows seeding ``count`` global tokens, in the published converter's order.

    The table is viewed as 512 rows (every ``n // 512``-th row; a table shorter than 512 is completed by
    Gaussian rows of its mean and standard deviation), laid out as a grid of ``512 / stride`` rows by
    ``stride`` columns and read column by column: rows 0, stride, 2·stride, ..., then 1, stride + 1, ...
    """
    n, d = positions.shape
    if n < 512:
        extra = torch.normal(
            positions.mean(0, keepdim=True).expand(512 - n, -1),
            positions.std(0, keepdim=True).expand(512 - n, -1),
        )
        positions, n = torch.cat([positions, extra]), 512
    factor = n // 512
    positions = positions[: 512 * factor : factor]  # (512, D)
    step = max(stride // factor, 1)
    r = torch.arange(count) % 512
    return positions[(r % (512 // step)) * step + r // (512 // step)]


def init_global_tokens(src, tokenizer, count: int, stride: int, random_init: bool) -> torch.Tensor:
    """Initial global embeddings (count, C); rows the source already has are kept."""
    cfg = src.config
    body = src.longattn if hasattr(src, "longattn") else src
    emb = body.embeddings
    words = emb.word_embeddings.weight.detach()
    positions = global_position_rows(
        emb.position_embeddings.weight.detach()[cfg.position_offset :], count, stride
    )
    bos = next(
        (t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id, cfg.bos_token_id) if t is not None), None
    )
    if bos is None:
        raise UserError("the tokenizer has neither a BOS nor a CLS token to seed the first global token")
    if random_init:
        cov = torch.cov(words.T) + 1e-6 * torch.eye(words.shape[1])
        word_part = torch.distributions.MultivariateNormal(words.mean(0), cov).sample((count,))
    else:
        if tokenizer.mask_token_id is None:
            raise UserError(
                "the tokenizer has no mask token to seed the global tokens; pass --random-global-init"
            )
        word_part = words[tokenizer.mask_token_id].expand(count, -1).clone()
    word_part[0] = words[bos]
    table = positions + word_part
    if cfg.position_offset == 0:  # BERT-style: the published converter adds token type 0 (use_token_ids)
        table = table + emb.token_type_embeddings.weight.detach()[0]
    if getattr(emb, "num_global_tokens", 0):
        have = emb.global_embeddings.weight.detach()
        table[: have.shape[0]] = have[:count]
    return table


def save_atomically(model, tokenizer, out: Path, then=None) -> None:
    """Write model and tokenizer (and whatever ``then(folder)`` adds) to ``out`` whole or not at all."""

    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if then is not None:
            then(folder)

    write_folder(out, fill)


def check(source_model, model, tokenizer, max_length: int, device: str = "auto") -> dict[str, Any]:
    """Run source and converted model on a short text, and the converted one on a ``max_length`` text.

    Returns:
        ``short_tokens``, ``top1_agreement`` (masked position(s) for masked-LM, labels otherwise),
        ``max_logit_diff``, ``long_tokens``, ``long_seconds``, ``tokens_per_second``, ``peak_memory_mb``,
        ``memory_kind``, ``device``.
    """
    from longattn_cli.devices import pick_device

    dev = pick_device(device)
    source_model, model = source_model.to(dev).eval(), model.to(dev).eval()
    mask = tokenizer.mask_token or ""
    short = tokenizer(
        f"Paris is the {mask} of France, and the city has a long history.", return_tensors="pt"
    ).to(dev)
    with torch.no_grad():
        a = _logits(source_model(**short))
        b = _logits(model(**short))
    where = (
        short["input_ids"] == tokenizer.mask_token_id
        if a.dim() == 3 and tokenizer.mask_token_id is not None
        else None
    )
    pa, pb = (
        (a[where], b[where])
        if where is not None and where.any()
        else (a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))
    )
    if a.shape == short["input_ids"].shape:  # one logit per token (ELECTRA's discriminator): its sign
        agreement = float(((a > 0) == (b > 0)).float().mean())
    else:
        agreement = float((pa.argmax(-1) == pb.argmax(-1)).float().mean())
    result = {
        "device": str(dev),
        "short_tokens": int(short["input_ids"].shape[1]),
        "top1_agreement": agreement,
        "max_logit_diff": float((a - b).abs().max()),
    }
    sentence = "The committee met again on Tuesday to discuss the budget, the schedule and the new members. "
    text = sentence * (max_length // 10 + 1)
    long = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).to(dev)
    peak, kind = _measure_start(dev)
    with torch.no_grad():
        start = time.perf_counter()
        model(**long)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    result.update(
        long_tokens=int(long["input_ids"].shape[1]),
        long_seconds=seconds,
        tokens_per_second=long["input_ids"].shape[1] / seconds,
        peak_memory_mb=_measure_end(dev, peak),
        memory_kind=kind,
    )
    source_model.cpu(), model.cpu()
    return result


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def _measure_start(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev), "CUDA peak allocated above the weights"
    return peak_rss_mb(), "process peak RSS growth (0 when below an earlier peak)"


def _measure_end(dev, start) -> float:
    if dev.type == "cuda":
        return (torch.cuda.max_memory_allocated(dev) - start) / 2**20
    return max(peak_rss_mb() - start, 0.0)


def render_check(result: dict[str, Any], max_length: int) -> None:
    """The ``--check`` table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"conversion check on {result['device']}", title_justify="left")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_row(
        f"short text ({result['short_tokens']} tokens): top-1 agreement with the source",
        f"{result['top1_agreement']:.0%}",
    )
    table.add_row("short text: largest logit difference", f"{result['max_logit_diff']:.4g}")
    table.add_row(
        f"long text ({result['long_tokens']} of {max_length} tokens): forward time",
        f"{result['long_seconds']:.3f} s",
    )
    table.add_row("long text: throughput", f"{result['tokens_per_second']:.0f} tokens/s")
    table.add_row(f"long text: memory ({result['memory_kind']})", f"{result['peak_memory_mb']:.0f} MiB")
    Console().print(table)
