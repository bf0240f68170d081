"""LRA "Text": IMDB reviews as raw bytes (binary sentiment, up to 4,000 bytes).

From the hub (``stanfordnlp/imdb``) when online, or from local files: the original ``aclImdb`` folder
(``train/pos/*.txt``, ``train/neg/*.txt``, ``test/...``) or ``train``/``test`` files in jsonl, json, csv or
parquet with ``text`` and ``label`` columns. As in LRA, the test split doubles as the validation split.
"""

from __future__ import annotations

from pathlib import Path

from longattn_cli.errors import UserError
from longattn_cli.lra.vocab import SPECIAL

HUB_ID = "stanfordnlp/imdb"

_DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _from_aclimdb(root: Path):
    import datasets

    splits = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            for f in sorted((root / split / sub).glob("*.txt")):
                texts.append(f.read_text(encoding="utf-8", errors="replace"))
                labels.append(label)
        if not texts:
            raise UserError(f"{root / split} holds no pos/*.txt or neg/*.txt reviews")
        splits[split] = datasets.Dataset.from_dict({"text": texts, "label": labels})
    return datasets.DatasetDict(splits)


def _from_files(root: Path):
    import datasets

    files = {}
    for split in ("train", "test"):
        found = [p for p in sorted(root.glob(f"{split}.*")) if p.suffix in _DATA_SUFFIXES]
        if not found:
            raise UserError(
                f"no {split} file in {root}; expected {split}.jsonl/.json/.csv/.parquet or an aclImdb folder"
            )
        files[split] = str(found[0])
    kinds = {_DATA_SUFFIXES[Path(f).suffix] for f in files.values()}
    if len(kinds) != 1:
        raise UserError(f"train and test files in {root} differ in format: {', '.join(files.values())}")
    return datasets.load_dataset(kinds.pop(), data_files=files)


def load(source: str | None = None):
    """The task's ``DatasetDict`` with ``train``, ``validation`` (= test, as in LRA) and ``test``.

    Args:
        source: a local folder (aclImdb layout or split files); ``None`` fetches ``stanfordnlp/imdb``.
    """
    import datasets

    if source is None:
        from longattn_cli.hub import hub_reachable

        if not hub_reachable():
            raise UserError(
                f"the hub dataset {HUB_ID} is unreachable (offline?); pass --source with a local aclImdb folder or train/test files"
            )
        data = datasets.load_dataset(HUB_ID)
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise UserError(f"text source {source!r} is not a directory")
        data = _from_aclimdb(root) if (root / "train" / "pos").is_dir() else _from_files(root)
    for split in ("train", "test"):
        missing = {"text", "label"} - set(data[split].column_names)
        if missing:
            raise UserError(f"the {split} split lacks column(s) {', '.join(sorted(missing))}")
    return datasets.DatasetDict({"train": data["train"], "validation": data["test"], "test": data["test"]})


def build_tokenizer(max_length: int = 4_000):
    """A byte-level tokenizer: one token per UTF-8 byte (256 symbols) plus specials, ``[CLS]`` prepended."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from longattn_cli.lra.vocab import finish

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    vocab.update({ch: len(SPECIAL) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            pre_tokenizers.Split(Regex("."), "isolated"),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return finish(tok, vocab, max_length)


def write(out: str | Path, source: str | None = None) -> Path:
    """Save the splits as jsonl and the byte tokenizer under ``out``."""
    import datasets

    datasets.disable_progress_bars()
    out = Path(out)
    data = load(source)
    out.mkdir(parents=True, exist_ok=True)
    for split, ds in data.items():
        ds.select_columns(["text", "label"]).to_json(out / f"{split}.jsonl", lines=True)
    build_tokenizer().save_pretrained(out / "tokenizer")
    return out
