"""sentence-transformers beside the longattn family: the files that make a saved model a sentence-transformers
model (modules, pooling, normalisation, max length), written by sentence-transformers itself, and the pooling
a sentence-transformers checkpoint carries (which ``longattn convert`` keeps)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from longattn_cli.errors import UserError

POOLINGS = ("mean", "cls", "max")


def sentence_transformers_pooling(directory: Path) -> tuple[str, bool] | None:
    """``(pooling, normalize)`` of the sentence-transformers model in ``directory``, or None when it is a plain
    Hugging Face folder (no ``modules.json``)."""
    import warnings

    if not (Path(directory) / "modules.json").is_file():
        return None
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError(
            f"{directory} is a sentence-transformers model; keeping its pooling needs sentence-transformers: "
            "pip install 'longattn[embed]'"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(str(directory), device="cpu")
    pooling = next((m for m in model if type(m).__name__ == "Pooling"), None)
    config = pooling.get_config_dict() if pooling is not None else {}
    mode = config.get("pooling_mode") or (pooling.get_pooling_mode_str() if pooling is not None else None)
    if mode not in POOLINGS:
        raise UserError(
            f"{directory}: sentence-transformers pooling {mode!r} is not one longattn keeps; supported: "
            f"{', '.join(POOLINGS)}"
        )
    return mode, any(type(m).__name__ == "Normalize" for m in model)


def save_sentence_transformers(model_dir: str | Path, pooling: str = "mean", normalize: bool = False) -> None:
    """Add the sentence-transformers files (modules, pooling, normalisation, max length) to a saved model, so
    that ``SentenceTransformer(model_dir)`` embeds as ``longattn embed`` does with the same options. Written
    by sentence-transformers itself (into a temporary folder, from which its own files are copied)."""
    import warnings

    from huggingface_hub.utils import disable_progress_bars

    from longattn_cli.models.modeling import LongAttnConfig

    if pooling not in POOLINGS:
        raise UserError(f"--pooling {pooling!r}: valid: {', '.join(POOLINGS)}")
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Normalize, Pooling, Transformer
    except ImportError:
        raise UserError(
            "writing sentence-transformers files needs sentence-transformers: pip install 'longattn[embed]'"
        ) from None
    disable_progress_bars()  # its save's "Writing model shards" bar
    model_dir = Path(model_dir)
    length = LongAttnConfig.from_pretrained(model_dir).max_sequence_length
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecation notices about module paths
        word = Transformer(str(model_dir), max_seq_length=length)
        modules = [word, Pooling(word.auto_model.config.hidden_size, pooling_mode=pooling)]
        modules += [Normalize()] if normalize else []
        with tempfile.TemporaryDirectory() as tmp:
            SentenceTransformer(modules=modules, device="cpu").save(tmp)
            _copy_sentence_transformers_files(Path(tmp), model_dir)


def _copy_sentence_transformers_files(source: Path, target: Path) -> None:
    """The files sentence-transformers adds to a Hugging Face model folder: modules.json, its configs, and
    one sub-folder per module after the first."""
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    for sub in source.iterdir():
        if sub.is_dir() and sub.name[:1].isdigit():
            shutil.rmtree(target / sub.name, ignore_errors=True)
            shutil.copytree(sub, target / sub.name)
