"""Fine-tuning labels: what the label column holds, how it becomes tensors, and how predictions read back.

The problem type follows the column's type unless the recipe says otherwise: class labels, integers or strings
are single-label classification; lists of them are multi-label (sequence classification) or one label per word
(token classification); floats are regression.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from longattn_cli.errors import UserError


@dataclasses.dataclass
class Labels:
    """The label set of a fine-tuning run.

    Attributes:
        problem_type: ``single_label_classification``, ``multi_label_classification``, ``regression`` or
            ``token_classification``.
        names: one name per model output (``["score"]`` for regression).
        column: the data column holding the labels.
        indexed: the column holds class indices (a ``ClassLabel``) rather than names.
    """

    problem_type: str
    names: list[str]
    column: str
    indexed: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def _index(self, value: Any) -> int:
        if self.indexed and isinstance(value, int) and 0 <= value < self.num_labels:
            return value
        key = value if isinstance(value, str) else str(value)
        try:
            return self.names.index(key)
        except ValueError:
            raise UserError(
                f"label {value!r} in column {self.column!r} is not one of the known labels {', '.join(self.names[:10])}"
            ) from None

    def encode(self, value: Any) -> Any:
        """A label as the model's loss expects it: class index, multi-hot floats, or a float."""
        if self.problem_type == "regression":
            return float(value)
        if self.problem_type == "multi_label_classification":
            hot = [0.0] * self.num_labels
            for v in value:
                hot[self._index(v)] = 1.0
            return hot
        return self._index(value)

    def decode(self, scores: list[float]) -> Any:
        """A prediction from one example's (or one word's) logits."""
        if self.problem_type == "regression":
            return scores[0]
        if self.problem_type == "multi_label_classification":
            return [n for n, s in zip(self.names, scores, strict=True) if s > 0]
        return self.names[max(range(len(scores)), key=scores.__getitem__)]


def _kind(feature) -> tuple[str, list[str] | None]:
    """(``class``/``int``/``str``/``float``/``list-...``/``other``, class names) of a datasets feature."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "class", list(feature.names)
    if isinstance(feature, datasets.Value):
        dtype = feature.dtype
        if dtype.startswith(("int", "uint")) or dtype == "bool":
            return "int", None
        if dtype.startswith("float") or dtype == "double":
            return "float", None
        if dtype in ("string", "large_string"):
            return "str", None
    inner = getattr(feature, "feature", None)
    if inner is not None:
        kind, names = _kind(inner)
        return f"list-{kind}", names
    return "other", None


def infer(splits: list, column: str, task: str, problem_type: str = "auto") -> Labels:
    """Work out the label set from the labelled splits (names come from all of them, sorted).

    Raises:
        UserError: no such column, or a column whose type fits neither the task nor ``problem_type``.
    """
    first = splits[0]
    if column not in first.column_names:
        raise UserError(
            f"data: no label column {column!r}; the data has {', '.join(first.column_names)} (set data.label_column)"
        )
    kind, names = _kind(first.features[column])
    token = task == "token-classification"
    allowed = (
        {"list-class", "list-int", "list-str"}
        if token
        else {"class", "int", "str", "float", "list-class", "list-int", "list-str"}
    )
    if kind not in allowed:
        want = (
            "a list of labels per example (one per word)"
            if token
            else "class labels, integers, strings, floats or lists of labels"
        )
        raise UserError(f"data: label column {column!r} must hold {want}; it holds {first.features[column]}")
    if problem_type == "auto":
        if token or not kind.startswith("list"):
            problem_type = "regression" if kind == "float" else "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if kind not in ("float", "int"):
            raise UserError(
                f"data: regression needs numbers in label column {column!r}; it holds {first.features[column]}"
            )
        return Labels("regression", ["score"], column)
    if problem_type == "multi_label_classification" and not kind.startswith("list"):
        raise UserError(
            f"data: multi-label classification needs a list of labels per example in column {column!r}"
        )
    if kind.endswith("float"):
        raise UserError(
            f"data: label column {column!r} holds floats; classification needs class labels, integers or strings"
        )
    indexed = names is not None
    if names is None:
        names = _collect(splits, column, kind)
    return Labels("token_classification" if token else problem_type, names, column, indexed)


def _collect(splits: list, column: str, kind: str) -> list[str]:
    """Names of integer or string labels seen in any split: 0..max for integers, sorted strings otherwise."""
    seen: set = set()
    for ds in splits:
        if column not in ds.column_names:
            continue
        for value in ds[column]:
            seen.update(value if kind.startswith("list") else [value])
    if kind.endswith("int"):
        if any(v < 0 for v in seen):
            raise UserError(
                f"data: label column {column!r} holds negative integers; class indices start at 0"
            )
        return [str(i) for i in range(max(seen) + 1)]
    return sorted(str(v) for v in seen)


def majority_share(labels: list) -> float | None:
    """The accuracy of always predicting the most common label: the floor a classifier must beat (None for
    no labels)."""
    return max(Counter(labels).values()) / len(labels) if labels else None
