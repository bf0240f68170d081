"""Training data through ``datasets``: loading, fingerprints, tokenizers, packing and MLM masking.

Sources are a local file (txt, json/jsonl, csv, parquet), a hub dataset (name, configuration, split, optional
streaming) or ``python-docs``, the English documentation that ships inside every CPython (so the default recipe
needs no download). Pretraining packs documents into full ``max_length`` blocks (each document is wrapped in
the tokenizer's own special tokens, which separate it from the next) and caches the packed dataset under a
fingerprint of everything it depends on; masking is dynamic and seeded per batch, so a resumed run sees the
very masks it would have seen.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError
from longattn_cli.models.tokenizer import train_bpe_tokenizer

SUFFIX_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
PYTHON_DOCS = "python-docs"
PROCESSING_VERSION = "1"  # bump when packing or tokenization changes, so that old caches are not reused


def _first_line(exc: BaseException) -> str:
    """The most specific line of an exception chain (datasets wraps parser errors in generic ones)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_local(value: str) -> bool:
    """A value naming a local file: it exists, or it ends in a data-file suffix."""
    return Path(value).expanduser().exists() or Path(value).suffix.lower() in SUFFIX_BUILDERS


def python_docs_text() -> list[str]:
    """Paragraphs of English (over 40 characters) from CPython's bundled pydoc topics, always installed."""
    from pydoc_data.topics import topics

    return [p.strip() for body in topics.values() for p in body.split("\n\n") if len(p.strip()) > 40]


def python_docs_file(cache_dir: str) -> Path:
    """CPython's pydoc topics written out as a text file, one paragraph per blank-line-separated block."""
    text = "\n\n".join(python_docs_text())
    path = Path(cache_dir) / "python-docs" / f"topics-{_sha(text)}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)
    return path


def load_raw(source: str, split: str, data, what: str = "data.source"):
    """One split of a dataset: a ``datasets.Dataset`` (or ``IterableDataset`` when streaming).

    Args:
        source: ``python-docs``, a local file, a local directory (data files whose names give the splits, or
            a dataset saved with ``save_to_disk``), or a hub dataset name.
        split: split name (hub datasets and directories; a local file is one split).
        data: the recipe's data section (config name, streaming, cache_dir, max_examples).
        what: the recipe key that named ``source``, for error messages.
    """
    import datasets

    if source == PYTHON_DOCS:
        source = str(python_docs_file(data.cache_dir))
    if Path(source).expanduser().is_dir():
        ds = _load_dir(Path(source).expanduser(), split, data, what)
    elif is_local(source):
        ds = _load_file(Path(source).expanduser(), data, what)
    else:
        ds = _load_hub(source, split, data, what)
    if data.max_examples is not None:
        ds = (
            ds.take(data.max_examples)
            if isinstance(ds, datasets.IterableDataset)
            else ds.select(range(min(data.max_examples, len(ds))))
        )
    return ds


def _load_dir(path: Path, split: str, data, what: str):
    """A directory: a dataset saved with ``save_to_disk``, or data files whose names give the splits."""
    import datasets

    try:
        if any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"{what}: {path} has no split {split!r}; it has {', '.join(ds)}")
                ds = ds[split]
            return ds.to_iterable_dataset() if data.streaming else ds
        return datasets.load_dataset(
            str(path), split=split, streaming=data.streaming, cache_dir=str(Path(data.cache_dir) / "datasets")
        )
    except UserError:
        raise
    except Exception as exc:
        if _no_rows(exc):
            raise UserError(
                f"{what}: split {split!r} of directory {path} has no rows (a file with only a header?)"
            ) from None
        raise UserError(
            f"{what}: cannot read split {split!r} of directory {path}: {_first_line(exc)}"
        ) from None


def _no_rows(exc: BaseException) -> bool:
    """datasets' way of saying a split's files produced no examples (e.g. a CSV with only a header)."""
    return "corresponds to no data" in str(exc)


def _load_file(path: Path, data, what: str):
    import datasets

    if not path.is_file():
        raise UserError(f"{what}: file {str(path)!r} does not exist")
    builder = SUFFIX_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"{what}: {path} has an unknown suffix; valid: {', '.join(SUFFIX_BUILDERS)}")
    if path.stat().st_size == 0:
        raise UserError(f"{what}: file {path} is empty")
    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(
            builder,
            data_files=str(path),
            split="train",
            streaming=data.streaming,
            cache_dir=str(Path(data.cache_dir) / "datasets"),
            **kwargs,
        )
    except Exception as exc:  # pyarrow/json/csv parse errors come in many types
        if _no_rows(exc):
            raise UserError(f"{what}: file {path} has no rows{_header_only(path)}") from None
        raise UserError(f"{what}: cannot read {path} as {builder}: {_first_line(exc)}") from None
    if not data.streaming and len(ds) == 0:
        raise UserError(f"{what}: file {path} has no rows{_header_only(path)}")
    return ds


def _header_only(path: Path) -> str:
    if path.suffix.lower() not in (".csv", ".tsv"):
        return ""
    with path.open(encoding="utf-8", errors="replace") as f:
        header = f.readline().strip()
    return f", only the header {header[:60]!r}" if header else ""


def _load_hub(name: str, split: str, data, what: str):
    import datasets

    from longattn_cli.hub import hub_reachable

    reachable = hub_reachable()
    try:
        if reachable:
            return datasets.load_dataset(name, data.config, split=split, streaming=data.streaming)
        with _offline():  # a cached copy works offline
            return datasets.load_dataset(name, data.config, split=split, streaming=data.streaming)
    except Exception as exc:
        if not reachable:
            raise UserError(
                f"{what}={name!r} is not a local file, and as a hub dataset it is not cached and the Hugging Face "
                "hub is unreachable (offline?); pass a local txt, json, jsonl, csv or parquet file"
            ) from None
        raise UserError(
            f"{what}: cannot load hub dataset {name!r} (config {data.config!r}, split {split!r}): {_first_line(exc)}"
        ) from None


class _offline:
    """Make ``datasets`` look only at its cache for the duration of the block."""

    def __enter__(self):
        import datasets.config as cfg

        self.old = cfg.HF_HUB_OFFLINE
        cfg.HF_HUB_OFFLINE = True

    def __exit__(self, *exc):
        import datasets.config as cfg

        cfg.HF_HUB_OFFLINE = self.old


def check_column(ds, column: str, kinds: tuple[str, ...], what: str) -> None:
    """Fail with one line when ``column`` is missing or does not hold ``kinds`` (``text``, ``words``...)."""
    names = list(ds.column_names or [])
    if names and column not in names:
        raise UserError(f"{what}: no column {column!r}; the data has {', '.join(names)}")
    features = getattr(ds, "features", None)
    if features and column in features:  # judged by type, so that empty cells do not mislead
        feature = features[column]
        inner = getattr(feature, "feature", None)
        found = {"text": _is_string(feature), "words": inner is not None and _is_string(inner)}
        shown = str(feature)
    else:  # a stream of unknown type: judge by the first example that has a value
        sample = next((ex for ex in itertools.islice(ds, 100) if ex.get(column) is not None), None)
        if sample is None:
            raise UserError(
                f"{what}: no example with a value in column {column!r}; the data has {', '.join(names) or 'none'}"
            )
        value = sample[column]
        found = {
            "text": isinstance(value, str),
            "words": isinstance(value, list) and all(isinstance(w, str) for w in value),
        }
        shown = f"{type(value).__name__} {_short(value)!r}"
    if not any(found[k] for k in kinds):
        want = " or ".join({"text": "strings", "words": "lists of words"}[k] for k in kinds)
        raise UserError(f"{what}: column {column!r} must hold {want}, found {shown}")


def _is_string(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:39] + "…"


def file_digest(path: Path) -> str:
    """Content hash of a data file (size and mtime only beyond 2 GB, where hashing would take minutes)."""
    stat = path.stat()
    if stat.st_size > 2**31:
        return _sha(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def source_fingerprint(source: str, split: str, data) -> str:
    """What identifies the raw data: file contents, or hub name + config + split (not the hub revision)."""
    if source == PYTHON_DOCS:
        source = str(python_docs_file(data.cache_dir))
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return _sha(
            "dir", [(str(p.relative_to(path)), file_digest(p)) for p in files], split, data.max_examples
        )
    if is_local(source):
        return _sha("file", file_digest(path), data.max_examples)
    return _sha("hub", source, data.config, split, data.streaming, data.max_examples)


def tokenizer_hash(tokenizer) -> str:
    """Hash of what a tokenizer maps text to: its vocabulary and special tokens."""
    vocab = sorted(tokenizer.get_vocab().items())
    return _sha(vocab, tokenizer.all_special_tokens, type(tokenizer).__name__)[:12]


def corpus_tokenizer(raw, data, vocab_size: int, fingerprint: str, limit: int = 200_000):
    """A byte-level BPE tokenizer trained on (up to ``limit`` documents of) the corpus, cached by fingerprint."""
    from transformers import AutoTokenizer

    out = (
        Path(data.cache_dir)
        / "tokenizers"
        / _sha(fingerprint, data.text_column, vocab_size, limit, PROCESSING_VERSION)
    )
    if (out / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(out)
    texts = (ex[data.text_column] for ex in itertools.islice(raw, limit) if ex[data.text_column])
    tmp = out.with_name(out.name + f".tmp{id(texts)}")
    tok = train_bpe_tokenizer(texts, tmp, vocab_size, data.max_length)
    if not out.exists():
        tmp.replace(out)
    return tok


def pack(raw, tokenizer, data, fingerprint: str, what: str = "data.source"):
    """Tokenize and pack documents into ``max_length`` blocks; cached on disk for map-style datasets.

    Returns:
        (dataset with an ``input_ids`` column of full blocks, the processed data's fingerprint, cache hit?).
    """
    import datasets

    key = _sha(fingerprint, tokenizer_hash(tokenizer), data.max_length, data.text_column, PROCESSING_VERSION)
    streaming = isinstance(raw, datasets.IterableDataset)
    cached = Path(data.cache_dir) / "processed" / key
    if not streaming and (cached / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(cached)), key, True
    column, n = data.text_column, data.max_length

    def tokenize_and_group(batch):
        docs = [t for t in batch[column] if t]  # empty cells (None, "") are not documents
        ids = tokenizer(docs, add_special_tokens=True, truncation=False)["input_ids"] if docs else []
        flat = [t for doc in ids for t in doc]
        return {"input_ids": [flat[i : i + n] for i in range(0, len(flat) - n + 1, n)]}

    removed = raw.column_names or list(next(iter(raw)))  # a streamed dataset may not know its columns
    packed = raw.map(
        tokenize_and_group,
        batched=True,
        batch_size=100_000,
        remove_columns=removed,
        **({} if streaming else {"desc": "packing", "new_fingerprint": key}),
    )
    if streaming:
        return packed, key, False
    if len(packed) == 0:
        total = sum(
            len(x) for x in tokenizer(list(raw.select(range(min(len(raw), 1000)))[column]))["input_ids"]
        )
        raise UserError(
            f"{what}: zero examples after packing: the corpus has about {total} tokens, fewer than "
            f"data.max_length={n}; use more text or a smaller data.max_length"
        )
    tmp = cached.with_name(cached.name + f".tmp{id(packed)}")
    packed.save_to_disk(str(tmp))
    if not cached.exists():
        tmp.replace(cached)
    return datasets.load_from_disk(str(cached)), key, False


class MaskingCollator:
    """Dynamic MLM masking (BERT's rule: of the chosen tokens 80% ``<mask>``, 10% random, 10% unchanged).

    Each batch draws from its own generator seeded by (seed, batch key), so masks depend only on which batch
    it is, never on what ran before: a resumed run masks exactly as the uninterrupted one.

    Args:
        tokenizer: supplies the mask token, the special tokens (never masked) and, for whole-word masking,
            which tokens start a word (``Ġ``/``▁`` prefixes, or no ``##`` continuation).
        probability: fraction of tokens chosen.
        whole_word: choose words rather than tokens.
        seed: the run's seed.
    """

    def __init__(self, tokenizer, probability: float = 0.15, whole_word: bool = False, seed: int = 0):
        if tokenizer.mask_token_id is None:
            raise UserError("the tokenizer has no mask token; masked-LM pretraining needs one (e.g. <mask>)")
        self.mask_id = tokenizer.mask_token_id
        self.vocab = len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.probability, self.whole_word, self.seed = probability, whole_word, seed
        if whole_word:
            tokens = tokenizer.convert_ids_to_tokens(list(range(self.vocab)))
            wordpiece = any(t.startswith("##") for t in tokens if t)
            self.starts = torch.tensor(
                [
                    not t.startswith("##") if wordpiece else t.startswith(("Ġ", "▁"))
                    for t in (x or "" for x in tokens)
                ]
            )

    def __call__(self, examples: list[dict[str, Any]], key: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(
            [ex["input_ids"] for ex in examples], dtype=torch.long
        )  # (B, N), packed: no padding
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        special = torch.isin(ids, self.special)
        chosen = self._choose(ids, special, g)
        labels = torch.where(chosen, ids, -100)
        r = torch.rand(ids.shape, generator=g)
        random_ids = torch.randint(self.vocab, ids.shape, generator=g)
        inputs = torch.where(chosen & (r < 0.8), self.mask_id, ids)
        inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}

    def _choose(self, ids: torch.Tensor, special: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.whole_word:
            starts = self.starts[ids] | special
            word = torch.cumsum(starts.long(), dim=1)  # (B, N) word index of every token
            pick = torch.rand(ids.shape, generator=g) < self.probability  # decided at each word's first token
            chosen = torch.gather(pick & starts, 1, _first_index(word))
        else:
            chosen = torch.rand(ids.shape, generator=g) < self.probability
        chosen &= ~special
        if not chosen.any():  # a loss over zero tokens is NaN: always predict at least one
            real = (~special).nonzero()
            if len(real):
                b, n = real[torch.randint(len(real), (1,), generator=g)][0]
                chosen[b, n] = True
        return chosen


def _first_index(word: torch.Tensor) -> torch.Tensor:
    """For every token, the position of the first token of its word: (B, N) from word indices (B, N)."""
    n = word.shape[1]
    pos = torch.arange(n).expand_as(word)
    start = torch.where(
        torch.cat([torch.ones_like(word[:, :1], dtype=torch.bool), word[:, 1:] != word[:, :-1]], 1), pos, 0
    )
    return torch.cummax(start, dim=1).values
