"""Evaluation metrics of fine-tuning: accuracy, F1 and MSE, computed from logits and labels in torch."""

from __future__ import annotations

import torch


def macro_f1(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``gold`` or ``pred``."""
    scores = []
    for c in torch.unique(torch.cat([pred, gold])):
        tp = ((pred == c) & (gold == c)).sum().item()
        fp = ((pred == c) & (gold != c)).sum().item()
        fn = ((pred != c) & (gold == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return sum(scores) / len(scores) if scores else 0.0


def compute(problem_type: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Metrics for one problem type.

    Args:
        problem_type: ``single_label_classification`` (accuracy, macro F1), ``multi_label_classification``
            (exact-match accuracy, micro F1 at logit 0), ``regression`` (MSE) or ``token_classification``
            (accuracy and macro F1 over the labelled tokens).
        logits: (examples, outputs), or (tokens, outputs) for token classification.
        labels: class indices, multi-hot floats or targets, matching ``logits``; -100 marks unlabelled tokens.
    """
    if problem_type == "regression":
        return {"mse": torch.mean((logits.squeeze(-1).double() - labels.double()) ** 2).item()}
    if problem_type == "multi_label_classification":
        pred, gold = logits > 0, labels > 0.5
        tp = (pred & gold).sum().item()
        wrong = (pred ^ gold).sum().item()
        return {
            "accuracy": (pred == gold).all(dim=1).double().mean().item(),
            "f1": 2 * tp / (2 * tp + wrong) if tp + wrong else 1.0,
        }
    keep = labels != -100
    pred, gold = logits.argmax(-1)[keep], labels[keep]
    return {"accuracy": (pred == gold).double().mean().item(), "f1": macro_f1(pred, gold)}


def loss(problem_type: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The heads' training loss over a whole evaluation set: cross-entropy (mean over examples, or over the
    labelled tokens), MSE for regression, binary cross-entropy (mean over labels) for multi-label."""
    import torch.nn.functional as F

    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).double(), labels.double()).item()
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.double(), labels.double()).item()
    return F.cross_entropy(logits.double(), labels.long(), ignore_index=-100).item()


BEST = {
    "single_label_classification": ("accuracy", True),
    "multi_label_classification": ("f1", True),
    "token_classification": ("f1", True),
    "regression": ("mse", False),
}


def lower_is_better(metric: str) -> bool:
    return metric in ("mse", "loss")


def per_class(pred: torch.Tensor, gold: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Precision, recall and F1 of every class (``"precision NAME"``...; 0 where a class is never predicted
    or never true)."""
    out = {}
    for c, name in enumerate(names):
        tp = ((pred == c) & (gold == c)).sum().item()
        predicted, true = (pred == c).sum().item(), (gold == c).sum().item()
        out[f"precision {name}"] = tp / predicted if predicted else 0.0
        out[f"recall {name}"] = tp / true if true else 0.0
        out[f"f1 {name}"] = 2 * tp / (predicted + true) if predicted + true else 0.0
    return out


def pearson(pred: torch.Tensor, gold: torch.Tensor) -> float | None:
    """Pearson's correlation of predictions and targets (None when either is constant)."""
    x, y = pred.double() - pred.double().mean(), gold.double() - gold.double().mean()
    norm = (x.square().sum() * y.square().sum()).sqrt().item()
    return (x * y).sum().item() / norm if norm else None


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """Spans ``(start, end, type)`` of a BIO tag sequence (``B-X`` starts one; ``I-X`` continues a span of
    type X or, after anything else, starts one, as seqeval reads IOB2 by default)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == kind
        if start is not None and not continues:
            spans.add((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, name
    return spans


def entity_f1(pred: list[list[str]], gold: list[list[str]]) -> float:
    """Micro F1 over entity spans, example by example (an entity counts only when span and type match)."""
    tp = found = true = 0
    for p, g in zip(pred, gold, strict=True):
        ps, gs = entities(p), entities(g)
        tp, found, true = tp + len(ps & gs), found + len(ps), true + len(gs)
    return 2 * tp / (found + true) if found + true else 1.0
