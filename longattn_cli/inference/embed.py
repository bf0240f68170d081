"""``longattn embed``: one vector per document (mean over its real tokens by default), written as ``.npy`` or
Parquet; and the sentence-transformers files that make ``SentenceTransformer(dir).encode(texts)`` give the
same vectors.

Documents are batched longest first (a batch pads to its longest document, so sorting wastes no compute on
padding) and written in input order. Pooling follows sentence-transformers' ``Pooling`` module: ``mean`` over
the real tokens, ``cls`` (the first token), ``max`` over the real tokens; ``--normalize`` scales each vector to
unit length, as its ``Normalize`` module does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError
from longattn_cli.inference.files import check_output
from longattn_cli.models.sentence import POOLINGS
from longattn_cli.training.sampling import longest_first

FORMATS = (".npy", ".parquet")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, N, C) hidden states and a (B, N) mask of real tokens → (B, C)."""
    if pooling == "cls":
        return hidden[:, 0]
    keep = mask.bool().unsqueeze(-1)
    if pooling == "max":
        return hidden.masked_fill(~keep, torch.finfo(hidden.dtype).min).amax(dim=1)
    weights = keep.to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@torch.no_grad()
def vectors(
    model, tokenizer, texts: list[str], max_length: int, pooling: str, normalize: bool, batch_size: int
):
    """(len(texts), hidden size) float32 vectors of ``model`` (a bare encoder), in the order of ``texts``."""
    device = next(model.parameters()).device
    encoded = tokenizer([t or "" for t in texts], truncation=True, max_length=max_length)["input_ids"]
    out = torch.empty(len(encoded), model.config.hidden_size)
    for rows in longest_first([len(x) for x in encoded], batch_size):
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model(**batch).last_hidden_state
        pooled = pool(hidden, batch["attention_mask"], pooling).float()
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        out[rows] = pooled.cpu()
    return out


def write(vectors_: torch.Tensor, out: Path) -> None:
    """``.npy`` (float32, one row per document) or Parquet (one ``embedding`` list per row), written under a
    temporary name and renamed, so that an interrupted run leaves no half-written file."""
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".npy":
        import numpy as np

        with tmp.open("wb") as f:
            np.save(f, vectors_.numpy())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        column = pa.array(vectors_.tolist(), type=pa.list_(pa.float32()))
        pq.write_table(pa.table({"embedding": column}), tmp)
    tmp.replace(out)


def embed(
    model: str,
    data: str,
    out: str,
    pooling: str = "mean",
    normalize: bool = False,
    batch_size: int = 16,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed every document of ``data`` (its ``data.text_column``) with ``model``'s encoder into ``out``.

    ``data.max_length`` (in ``overrides``) truncates documents; by default they are read up to the model's
    longest input.

    Returns:
        ``{"documents", "dimension", "pooling", "normalize", "max_length", "out"}``.
    """
    from longattn_cli.devices import pick_device
    from longattn_cli.inference.task import data_config
    from longattn_cli.models.checkpoints import load_model
    from longattn_cli.models.tokenizer import load_tokenizer
    from longattn_cli.training import data as D

    if pooling not in POOLINGS:
        raise UserError(f"--pooling {pooling!r}: valid: {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    path = check_output(out, FORMATS, overwrite)
    encoder = load_model(model, head="base").to(pick_device("auto")).eval()
    tokenizer = load_tokenizer(model)
    overrides = dict(overrides or {})
    max_length = overrides.pop("data.max_length", None) or encoder.config.max_sequence_length
    data_cfg = data_config(model, data, overrides)
    raw = D.load_raw(data_cfg.source, data_cfg.split, data_cfg, what="--data")
    D.check_column(raw, data_cfg.text_column, ("text",), "--data")
    result = vectors(
        encoder, tokenizer, raw[data_cfg.text_column], max_length, pooling, normalize, batch_size
    )
    write(result, path)
    return dict(
        documents=len(result), dimension=result.shape[1], pooling=pooling, normalize=normalize,
        max_length=max_length, out=str(path),
    )  # fmt: skip
