"""What a sweep measures: our mechanisms' labelled variants and the references paired with them, chosen by
``--attention``, ``--reference`` and ``--reference-models``; and the baselines the ratio columns divide by."""

from __future__ import annotations

import dataclasses
from typing import Any

from longattn_cli.bench.references import REFERENCE_FLOPS, REFERENCES, Reference
from longattn_cli.errors import UserError

SDPA_BASELINES = ("hf-roberta-sdpa", "softmax-sdpa")
# In train mode the baseline is softmax at its fastest: torch's SDPA leaves its fused kernel for the math path
# (an n×n matrix) whenever attention dropout is on, so the sweep always adds this dropout-free variant there.
FUSED = "softmax-sdpa-fused"
TRAIN_BASELINES = (FUSED,)


@dataclasses.dataclass
class Candidate:
    """One thing measured: ours (mechanism + settings) or a reference (transformers family + config)."""

    label: str
    kind: str  # "ours" or "reference"
    mechanism: str  # ours: its name; reference: the mechanism it is paired with
    settings: dict[str, Any]
    reference: Reference | None = None
    modes: tuple[str, ...] = ("forward", "train")  # where it is measured
    attention_dropout: float | None = None  # None: the run's --dropout

    def spec(self, n: int) -> dict[str, Any]:
        """The JSON-able description a worker builds it from, at length ``n``."""
        out = {"label": self.label, "kind": self.kind, "mechanism": self.mechanism, "settings": self.settings}
        if self.attention_dropout is not None:
            out["attention_dropout"] = self.attention_dropout
        if self.reference is not None:
            ref = self.reference
            cfg = _passthrough(ref.family, self.settings) if ref.passthrough else {}
            cfg.update(ref.config(self.settings, n))
            out.update(family=ref.family, config=cfg, layer=ref.layer)
            if note := ref.note(n):
                out["note"] = note
        return out


def _passthrough(family: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Our settings named as one of the reference config's own fields, those BERT's config lacks (YOSO's τ and
    hashes, Nyströmformer's landmarks and convolution), so both sides run with the same values."""
    import inspect

    import transformers

    def fields(cls) -> set[str]:
        return set(inspect.signature(cls.__init__).parameters)

    own = fields(getattr(transformers, f"{family}Config")) - fields(transformers.BertConfig)
    return {k: v for k, v in settings.items() if k in own}


def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every registered mechanism's benchmark variants: label → (mechanism, settings)."""
    import sys

    from longattn_cli.attention.settings import available, settings_class

    base = sys.modules.get("longattn_cli.attention.base")  # classes registered so far (custom ones included)
    out = {}
    for name in available():
        cls = base._REGISTRY.get(name) if base else None
        table = cls.benchmark_variants() if cls else settings_class(name).benchmark_variants() or {name: {}}
        for label, settings in table.items():
            out[label] = (name, dict(settings))
    return out


def select_candidates(
    attention: str | None,
    overrides: dict[str, Any],
    reference: bool,
    dropout: float = 0.1,
    reference_models: str | None = None,
) -> list[Candidate]:
    """Our candidates from ``--attention`` (labels or mechanism names; all when empty) with ``--set``
    overrides applied wherever the mechanism has that setting, the dropout-free SDPA baseline of train mode
    (:data:`FUSED`), then the references paired with them."""
    from longattn_cli.attention.settings import available, make_settings, settings_class

    table = variants()
    wanted = [w.strip() for w in (attention or "").split(",") if w.strip() and w.strip() != "all"]
    wanted = wanted or list(table)
    picked: dict[str, tuple[str, dict[str, Any]]] = {}
    for w in wanted:
        if w in table:
            picked[w] = table[w]
        elif w in available():
            picked.update({lab: v for lab, v in table.items() if v[0] == w})
        else:
            raise UserError(
                f"unknown attention {w!r}; valid labels: {', '.join(table)}; mechanisms: {', '.join(available())}; "
                "or all"
            )
    fields = {name: {f.name for f in dataclasses.fields(settings_class(name))} for name, _ in picked.values()}
    unused = sorted(k for k in overrides if not any(k in f for f in fields.values()))
    if unused:
        valid = sorted(set().union(*fields.values()))
        raise UserError(
            f"--set {', '.join(unused)}: no selected attention has that setting; valid: {', '.join(valid) or 'none'}"
        )
    ours = []
    for label, (name, settings) in picked.items():
        settings = {**settings, **{k: v for k, v in overrides.items() if k in fields[name]}}
        ours.append(Candidate(label, "ours", name, make_settings(name, settings).to_dict()))
    if dropout > 0 or "softmax-sdpa" not in picked:  # with --dropout 0, softmax-sdpa is already the fused one
        sdpa = make_settings("softmax", {"implementation": "sdpa"}).to_dict()
        ours.append(Candidate(FUSED, "ours", "softmax", sdpa, modes=("train",), attention_dropout=0.0))
    refs = _references([c for c in ours if c.label != FUSED]) if reference else []
    return ours + refs + _named_references(reference_models, {c.label for c in refs})


def _named_references(labels: str | None, have: set[str]) -> list[Candidate]:
    """``--reference-models``: references by label, each with its paired mechanism's default settings."""
    from longattn_cli.attention import make_settings

    by_label = {ref.label: (name, ref) for name, refs in REFERENCES.items() for ref in refs}
    out = []
    for label in [x.strip() for x in (labels or "").split(",") if x.strip()]:
        if label not in by_label:
            raise UserError(f"--reference-models {label!r}: expected labels among {', '.join(by_label)}")
        name, ref = by_label[label]
        if label not in have:
            have.add(label)
            out.append(Candidate(label, "reference", name, make_settings(name).to_dict(), ref))
    return out


def _references(ours: list[Candidate]) -> list[Candidate]:
    """The references paired with the selected mechanisms (settings from the first variant of each), and
    always the SDPA one, which the ``÷ SDPA`` column divides by."""
    from longattn_cli.attention import make_settings

    first: dict[str, dict[str, Any]] = {}
    for c in ours:
        first.setdefault(c.mechanism, c.settings)
    first.setdefault("softmax", make_settings("softmax").to_dict())
    out = []
    for name, settings in first.items():
        for ref in REFERENCES.get(name, []):
            out.append(Candidate(ref.label, "reference", name, settings, ref))
    return out


def list_candidates() -> None:
    """Print every label ``--attention`` accepts, its settings, and the references paired with it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="benchmark variants (--attention takes labels or mechanism names)", title_justify="left"
    )
    for column in ("label", "mechanism", "settings", "--reference adds"):
        table.add_column(column, overflow="fold")
    for label, (name, settings) in variants().items():
        refs = ", ".join(r.label for r in REFERENCES.get(name, []))
        table.add_row(label, name, ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults", refs)
    console = Console()
    console.print(table)
    from longattn_cli.attention import get_mechanism
    from longattn_cli.bench.report import _compact

    counts = _compact("FLOPs per head and sequence (n tokens, head width d), by which %pk is computed", "")
    counts.add_column("mechanism", no_wrap=True)
    counts.add_column("count", overflow="fold")
    for name in dict.fromkeys(name for name, _ in variants().values()):
        counts.add_row(name, get_mechanism(name).FLOPS)
    for label, text in REFERENCE_FLOPS.items():
        counts.add_row(label, text + "; backward 2× forward")
    counts.add_row("+ layer", "q, k, v, output projections 8·n·C² forward (C = hidden size); model scope: + "
                   "feed-forward 4·n·C·I per layer; a backward costs 2× its forward")  # fmt: skip
    console.print(counts)
