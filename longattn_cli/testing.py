"""Tiny tokenizers and checkpoints built offline, for tests, the demo and documentation examples.

Nothing here downloads: tokenizers are trained with ``tokenizers`` on text that ships with CPython
(``pydoc_data.topics``), and checkpoints are transformers' own classes with random weights.
"""

from __future__ import annotations

from pathlib import Path

from longattn_cli.training.data import python_docs_text


def train_bpe_tokenizer(
    out_dir: str | Path, vocab_size: int = 1000, texts: list[str] | None = None, model_max_length: int = 512
):
    """:func:`longattn_cli.models.tokenizer.train_bpe_tokenizer` on CPython's docs unless ``texts`` are given."""
    from longattn_cli.models import tokenizer

    return tokenizer.train_bpe_tokenizer(texts or python_docs_text(), out_dir, vocab_size, model_max_length)


def train_wordpiece_tokenizer(out_dir: str | Path, vocab_size: int = 1000, model_max_length: int = 512):
    """A lower-cased WordPiece tokenizer with BERT's special tokens, saved to ``out_dir``; returns it loaded."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(
        python_docs_text(),
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    tok.save_model(str(out_dir))
    fast = BertTokenizerFast.from_pretrained(out_dir, model_max_length=model_max_length, do_lower_case=True)
    fast.save_pretrained(out_dir)
    return fast


TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_reference(
    family: str,
    out_dir: str | Path,
    head: str = "ForMaskedLM",
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    **overrides,
):
    """Save a tiny random ``{Family}{head}`` checkpoint of transformers' own classes to ``out_dir``.

    Args:
        family: ``roberta``, ``bert``, ``yoso``, ``nystromformer``, ``longformer``, ``big_bird`` or
            ``modernbert``.
        head: ``ForMaskedLM``, ``Model``, ``ForSequenceClassification`` or ``ForTokenClassification``.
        tokenizer_dir: a saved tokenizer to copy in (its vocabulary size is used).
        overrides: config fields.

    Returns:
        The reference model, in eval mode.
    """
    import torch
    import transformers

    names = {
        "roberta": "Roberta",
        "bert": "Bert",
        "yoso": "Yoso",
        "nystromformer": "Nystromformer",
        "longformer": "Longformer",
        "big_bird": "BigBird",
        "modernbert": "ModernBert",
    }
    name = names[family]
    config_cls = getattr(transformers, f"{name}Config")
    model_cls = getattr(transformers, f"{name}{head}")
    kw = dict(TINY)
    kw["max_position_embeddings"] = 130 if family != "bert" else 128
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        kw["vocab_size"] = len(tok)
        kw["pad_token_id"] = tok.pad_token_id
    kw.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kw)).eval()
    save_perturbed(model, out_dir, tokenizer_dir)
    return model


def save_perturbed(model, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> None:
    """Save a transformers ``model`` to ``out_dir`` with its LayerNorm and bias values shifted at random (so
    that a wrongly mapped key cannot hide behind ones and zeros), and the tokenizer files of ``tokenizer_dir``."""
    import shutil

    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file() and f.name != "config.json":
                shutil.copy(f, Path(out_dir) / f.name)


LSG_AUTO_MAP = {
    "AutoModel": "modeling_lsg_roberta.LSGRobertaModel",
    "AutoModelForMaskedLM": "modeling_lsg_roberta.LSGRobertaForMaskedLM",
}


def tiny_lsg_checkpoint(out_dir: str | Path, tokenizer_dir: str | Path | None = None, seed: int = 0, **lsg):
    """A tiny checkpoint in the published LSG format (``ccdv/lsg-base-4096``): a RoBERTa config with
    ``auto_map`` and the LSG fields ``lsg``, and RoBERTa weights plus a 512-row
    ``roberta.embeddings.global_embeddings.weight``.

    Returns:
        ``(reference RobertaForMaskedLM on the same weights, the 512-row global table)``.
    """
    import json

    import torch
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    ref = tiny_reference("roberta", out_dir, "ForMaskedLM", tokenizer_dir=tokenizer_dir, seed=seed)
    cfg = json.loads((out_dir / "config.json").read_text())
    cfg.update(auto_map=LSG_AUTO_MAP, architectures=["LSGRobertaForMaskedLM"], base_model_prefix="lsg", **lsg)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    state = load_file(out_dir / "model.safetensors")
    table = torch.randn(512, cfg["hidden_size"], generator=torch.Generator().manual_seed(seed + 3))
    state["roberta.embeddings.global_embeddings.weight"] = table
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    return ref, table


def tiny_config(attention: str = "softmax", block: int = 8, **fields):
    """A tiny :class:`LongAttnConfig` (``TINY``'s shape, no dropout) with ``attention``; LSG gets blocks of
    ``block`` tokens so that short inputs span several. ``fields`` override any config field."""
    from longattn_cli.models.modeling import LongAttnConfig

    config = LongAttnConfig(**{**TINY, "attention": attention, **fields})
    if attention == "lsg":
        config.set_attention(block_size=block, sparse_block_size=block)
    return config
