"""``longattn fill-mask``: top-k predictions for the mask tokens of one or more texts.

The predictions come from transformers' own fill-mask pipeline run on our model, so scores, tokens and
sequences are exactly what users of that pipeline expect; this module adds the checks and the output.
"""

from __future__ import annotations

import json
from typing import Any

from longattn_cli.errors import UserError


def predict(
    texts: list[str],
    model: str,
    top_k: int = 5,
    attention: str | None = None,
    attention_settings: dict[str, Any] | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> list[dict[str, Any]]:
    """Fill the masks of ``texts`` with the model at ``model`` (directory or hub id).

    Returns:
        One entry per text: ``{"text": ..., "predictions": [[{score, token, token_str, sequence}, ...], ...]}``,
        one inner list per mask token, best first.
    """
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if not texts:
        raise UserError("no text given; pass one or more texts containing the mask token")
    from longattn_cli.devices import pick_device, pick_dtype
    from longattn_cli.models.checkpoints import check_tokenizer, load_model
    from longattn_cli.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model)
    mask = tokenizer.mask_token
    if mask is None:
        raise UserError(f"the tokenizer of {model} has no mask token; fill-mask needs a masked-LM tokenizer")
    net = load_model(model, head="masked-lm", attention=attention, attention_settings=attention_settings)
    check_tokenizer(net.config, tokenizer, model)
    limit = net.config.max_sequence_length
    for i, text in enumerate(texts, 1):
        if mask not in text:
            raise UserError(f"text {i} has no mask token {mask!r}: {_short(text)!r}")
        n = len(tokenizer(text)["input_ids"])
        if n > limit:
            raise UserError(f"text {i} is {n} tokens long; the model takes at most {limit}")
    dev = pick_device(device)
    net = net.to(device=dev, dtype=pick_dtype(dtype))
    from transformers import pipeline

    tokenizer.model_max_length = limit
    fill = pipeline("fill-mask", model=net, tokenizer=tokenizer, device=dev)
    results = []
    for text in texts:
        out = fill(text, top_k=min(top_k, net.config.vocab_size))
        per_mask = out if out and isinstance(out[0], list) else [out]
        for k, preds in enumerate(per_mask):  # the pipeline's own hold <s>, </s> and the other masks' ids
            for p in preds:
                p["sequence"] = _filled(tokenizer, text, k, p["token"])
        results.append({"text": text, "predictions": [[_plain(p) for p in preds] for preds in per_mask]})
    return results


def _filled(tokenizer, text: str, k: int, token: int) -> str:
    """``text`` with its mask number ``k`` replaced by ``token`` and the other masks left as typed.

    A mask token that absorbs the space before it (RoBERTa's) is replaced together with that space, since
    the token then brings its own.
    """
    mask = tokenizer.mask_token
    parts = text.split(mask)
    head, tail = mask.join(parts[: k + 1]), mask.join(parts[k + 1 :])
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(tokenizer.mask_token_id)
    word = tokenizer.decode([token])
    if getattr(added, "lstrip", False):
        head = head.rstrip()
    elif head and not head[-1].isspace() and word[:1].isspace():
        word = word.lstrip()
    return head + word + tail


def _plain(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "score": float(p["score"]),
        "token": int(p["token"]),
        "token_str": p["token_str"],
        "sequence": p["sequence"],
    }


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def render(results: list[dict[str, Any]], as_json: bool = False) -> None:
    """Print results as a rich table, or as JSON on stdout."""
    if as_json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for t, item in enumerate(results, 1):
        many = len(item["predictions"]) > 1
        table = Table(title=f"[{t}] {_short(item['text'], 100)}", title_justify="left")
        if many:
            table.add_column("mask", justify="right")
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("token")
        table.add_column("sequence", overflow="fold")
        for m, preds in enumerate(item["predictions"], 1):
            for r, p in enumerate(preds, 1):
                row = [str(r), f"{p['score']:.4f}", repr(p["token_str"]), p["sequence"]]
                table.add_row(*([str(m)] if many else []), *row)
        console.print(table)
