"""ListOps, generated from the task's published specification (Nangia & Bowman 2018; LRA, Tay et al. 2020).

A sample is a nested expression over digits 0–9 with the operators MIN, MAX, MED (integer median) and SM
(sum modulo 10), written in prefix form with ``]`` closing each operator: ``[MAX 2 9 [MIN 4 7 ] 0 ]``.
The label is its value (10 classes). As in LRA: a node at depth < ``max_depth`` is an operator with
probability 0.25 (else a digit), an operator takes 2…``max_args`` arguments, and only trees whose token
count lies strictly between ``min_length`` and ``max_length`` are kept. Trees are unique across all splits.

Tokens are written without the parentheses of the original TSV files: they repeat what the ``]`` tokens
already say, and dropping them keeps the sequence length equal to the token count that the length filter
uses.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from longattn_cli.lra.vocab import SPECIAL

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))

VOCAB = SPECIAL + DIGITS + OPERATORS + (END,)
OPERATOR_P = 0.25


@dataclass
class ListOpsSpec:
    """What to generate.

    Attributes:
        train, validation, test: split sizes (LRA: 96,000 / 2,000 / 2,000).
        min_length, max_length: token counts allowed (exclusive bounds, as in LRA: 500 and 2,000).
        max_depth: deepest nesting.
        max_args: most arguments of one operator.
        seed: the generator's seed; the same spec always gives the same data.
    """

    train: int = 96_000
    validation: int = 2_000
    test: int = 2_000
    min_length: int = 500
    max_length: int = 2_000
    max_depth: int = 10
    max_args: int = 10
    seed: int = 0

    def __post_init__(self):
        for name in ("train", "validation", "test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ 0")
        if not 0 <= self.min_length < self.max_length - 1:
            raise ValueError(
                f"min_length={self.min_length} must be ≥ 0 and below max_length - 1 = {self.max_length - 1}"
            )
        if self.max_depth < 1 or self.max_args < 2:
            raise ValueError(f"max_depth={self.max_depth} must be ≥ 1 and max_args={self.max_args} ≥ 2")


def _tree(rng: random.Random, depth: int, spec: ListOpsSpec, budget: list[int]):
    """A random tree as nested lists ``[op, child...]`` or a digit; gives up (None) past the length budget."""
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if depth >= spec.max_depth or rng.random() >= OPERATOR_P:
        return rng.randrange(10)
    op = rng.choice(OPERATORS)
    children = []
    for _ in range(rng.randint(2, spec.max_args)):
        child = _tree(rng, depth + 1, spec, budget)
        if child is None:
            return None
        children.append(child)
    budget[0] -= 1  # the closing "]"
    return [op, *children]


def evaluate(tree) -> int:
    """The value of a tree (0–9)."""
    if isinstance(tree, int):
        return tree
    op, values = tree[0], [evaluate(c) for c in tree[1:]]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(statistics.median(values))
    return sum(values) % 10  # [SM


def tokens(tree) -> list[str]:
    """Prefix tokens of a tree: ``[OP`` children... ``]``."""
    if isinstance(tree, int):
        return [str(tree)]
    out = [tree[0]]
    for child in tree[1:]:
        out.extend(tokens(child))
    out.append(END)
    return out


def generate(spec: ListOpsSpec) -> Iterator[tuple[str, dict]]:
    """Yield ``(split, {"text", "label", "length"})`` for every sample, train first, deterministically."""
    rng = random.Random(spec.seed)
    seen: set[str] = set()
    for split in ("train", "validation", "test"):
        made = 0
        while made < getattr(spec, split):
            tree = _tree(rng, 1, spec, [spec.max_length])
            if tree is None:
                continue
            toks = tokens(tree)
            if not spec.min_length < len(toks) < spec.max_length:
                continue
            text = " ".join(toks)
            if text in seen:
                continue
            seen.add(text)
            made += 1
            yield split, {"text": text, "label": evaluate(tree), "length": len(toks)}


def build_dataset(spec: ListOpsSpec, progress=None):
    """The three splits as a ``datasets.DatasetDict`` (columns ``text``, ``label``, ``length``)."""
    import datasets

    rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for split, row in generate(spec):
        rows[split].append(row)
        if progress is not None:
            progress()
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
            "length": datasets.Value("int32"),
        }
    )
    return datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v, features=features) for k, v in rows.items()}
    )


def build_tokenizer(max_length: int = 2_048):
    """The task's word-level vocabulary as a transformers fast tokenizer (``[CLS]`` prepended)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from longattn_cli.lra.vocab import finish

    vocab = {t: i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return finish(tok, vocab, max_length)


def write(spec: ListOpsSpec, out: str | Path, progress=None) -> Path:
    """Generate and save: ``OUT/{train,validation,test}.jsonl`` plus the tokenizer in ``OUT/tokenizer``."""
    import datasets

    datasets.disable_progress_bars()
    out = Path(out)
    data = build_dataset(spec, progress)
    out.mkdir(parents=True, exist_ok=True)
    for split, ds in data.items():
        ds.to_json(out / f"{split}.jsonl", lines=True)
    build_tokenizer(spec.max_length + 48).save_pretrained(out / "tokenizer")
    return out
