"""Tokenizers: the one way longattn reads a tokenizer (checkpoint, tokenizer-only folder, hub id, SentencePiece
model) and the one way it trains one (byte-level BPE with RoBERTa's special tokens)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from longattn_cli.errors import UserError
from longattn_cli.hub import resolve


def load_tokenizer(source: str):
    """The tokenizer of ``source``: a checkpoint directory, a folder holding only a tokenizer, or a hub id.

    Raises:
        UserError: there is no usable tokenizer there (the message names the source and the reason).
    """
    from transformers import AutoTokenizer

    path = Path(source).expanduser()
    tokenizer_only = path.is_dir() and not (path / "config.json").is_file()
    directory = path if tokenizer_only else resolve(source)
    spm_files = [n for n in _SENTENCEPIECE_FILES if (directory / n).is_file()]
    try:
        if spm_files and not (directory / "tokenizer.json").is_file():
            return _sentencepiece_tokenizer(directory, source, spm_files[0])
        return AutoTokenizer.from_pretrained(directory)
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"no usable tokenizer in {source}: {first}") from None


# SentencePiece models as tokenizers ship them: ALBERT (and Nyströmformer), XLM-R/CamemBERT, Llama-style.
_SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def _sentencepiece_tokenizer(directory: Path, source: str, spm_name: str):
    """A tokenizer shipped only as a SentencePiece model (ALBERT's ``spiece.model``, as Nyströmformer's).

    Converting it needs ``sentencepiece`` and ``protobuf`` (the ``sentencepiece`` extra). transformers'
    AutoTokenizer maps some model types (nystromformer) to a class that cannot read ``.model`` files, so the
    class named in ``tokenizer_config.json`` is used directly.
    """
    missing = [m for m in ("sentencepiece", "google.protobuf") if not _installed(m)]
    if missing:
        raise UserError(
            f"the tokenizer of {source} is a SentencePiece model ({spm_name}); reading it needs "
            f"{' and '.join(m.split('.')[-1] for m in missing)}: pip install 'longattn[sentencepiece]'"
        )
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        declared = json.loads((directory / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        declared = None
    cls = tokenizer_class_from_name(declared) if declared else None
    return (cls or AutoTokenizer).from_pretrained(directory)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (google) is absent
        return False


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int, model_max_length: int):
    """Train a byte-level BPE tokenizer with RoBERTa's special tokens on ``texts``; save it to ``out_dir``.

    Returns:
        The saved tokenizer, loaded (a ``RobertaTokenizerFast``).
    """
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as RoBERTa's: pad 1, positions from 2
    tok.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False
    )
    tok.save_model(str(out_dir))
    # Built from the directory: the vocab_file/merges_file constructor silently yields a 5-token tokenizer.
    mask = AddedToken(
        "<mask>", lstrip=True, rstrip=False
    )  # "the <mask>" carries no stray space, as RoBERTa's
    fast = RobertaTokenizerFast.from_pretrained(out_dir, model_max_length=model_max_length, mask_token=mask)
    fast.save_pretrained(out_dir)
    return fast
