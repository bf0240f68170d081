"""``longattn benchmark``: time and peak memory of every attention mechanism against sequence length.

The sweep measures *candidates* (our mechanisms, one per labelled setting from each mechanism's
``benchmark_variants()``, and with ``--reference`` transformers' own implementations) at every length, in one or
both modes (forward; forward+backward), in one scope (one attention layer, or a whole model). Nothing here is
specific to a mechanism except :data:`REFERENCES`, the table pairing a mechanism name with the transformers
model a user would otherwise run. How one point is built and measured is :mod:`longattn_cli.bench.point`;
the tables, files and plot are :mod:`longattn_cli.bench.report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from longattn_cli.bench.status import OK, OOM, SKIPPED, TIMEOUT, UNAVAILABLE
from longattn_cli.errors import UserError
from longattn_cmd.options import FULL_COMMAND, QUICK  # noqa: F401  (FULL_COMMAND: for the CLI and tests)

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
SCOPES = ("layer", "model")
MODES = {"forward": ("forward",), "train": ("train",), "both": ("forward", "train")}

# Encoder shapes for --scope model (BERT's and RoBERTa's sizes; tiny is for tests and smoke runs).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}
VOCAB_SIZE = 50265  # RoBERTa's; the vocabulary only sizes the embedding table, which is not timed apart


@dataclasses.dataclass
class Reference:
    """transformers' implementation of a mechanism, measured next to ours with ``--reference``.

    Attributes:
        label: row label in the results.
        family: transformers class prefix (``{family}Config``, ``{family}Model``).
        config: (our settings of the paired mechanism, length) → extra config fields. Our settings whose names
            the reference's config also has are passed through first, so τ, hashes, landmarks... match.
        unavailable: (settings, length, device) → why it cannot run there, or None.
    """

    label: str
    family: str
    config: Callable[[dict[str, Any], int], dict[str, Any]] = lambda settings, n: {}
    unavailable: Callable[[dict[str, Any], int, str], str | None] = lambda settings, n, device: None
    # False: the reference keeps its own defaults even where one of our settings has the same name.
    passthrough: bool = True
    note: Callable[[int], str | None] = lambda n: None  # what the reference does at length n, for the table
    layer: str = "encoder.layer.0.attention"  # its separable attention module (layer scope)
    # Its own attention FLOP count (n, head width d, scope) → (forward, backward) per head and layer, where
    # the paired mechanism's count does not describe it; None: the paired mechanism's.
    flops: Callable[[int, int, str], tuple[float, float]] | None = None


def _yoso_lsh_unavailable(settings, n, device):
    if device != "cuda":
        return "transformers' YOSO LSH mode runs only with a CUDA kernel fetched from the hub"
    try:
        from transformers.models.yoso import modeling_yoso

        modeling_yoso.load_cuda_kernels()
    except Exception as exc:  # noqa: BLE001 - any failure to fetch or load the kernel means "not here"
        return f"transformers' YOSO LSH kernel cannot be loaded ({type(exc).__name__})"
    return None


def _nystrom_unavailable(settings, n, device):
    m = settings.get("num_landmarks", 64)
    if n % m:  # its segment means reshape n into (m, n / m)
        return f"transformers' Nyströmformer needs the length to be a multiple of num_landmarks={m}"
    return None


# Mechanism name → the implementations users would otherwise run. The SDPA baseline (ours ÷ SDPA) is the
# first of SDPA_BASELINES measured in the same run.
REFERENCES: dict[str, list[Reference]] = {
    "softmax": [Reference("hf-roberta-sdpa", "Roberta", lambda s, n: {"attn_implementation": "sdpa"})],
    "yoso": [
        Reference("hf-yoso-e", "Yoso", lambda s, n: {"use_expectation": True}),
        Reference("hf-yoso-lsh", "Yoso", lambda s, n: {"use_expectation": False}, _yoso_lsh_unavailable),
    ],
    # Its input length must equal segment_means_seq_len, so that is set to each measured length; where
    # num_landmarks equals the length it computes exact softmax attention instead. Its pseudo-inverse starts
    # as published (inv_coeff_init_option=True raises there).
    "nystrom": [
        Reference(
            "hf-nystrom",
            "Nystromformer",
            lambda s, n: {"segment_means_seq_len": n, "inv_coeff_init_option": False},
            _nystrom_unavailable,
        )
    ],
}
# The long-document encoders users pick instead of LSG, with their own window and block defaults: Longformer's
# window of 512 (256 keys each side) with the first token global, BigBird's blocks of 64 with 3 random blocks
# (block_sparse; at most 704 tokens it runs full attention, and says so), ModernBERT's 128-token local
# attention with every third layer global. Longformer and BigBird pad inputs to their window or block
# themselves; that padding is part of their time.
_BIGBIRD_FULL_UNTIL = (5 + 2 * 3) * 64  # transformers' BigBirdModel: block_sparse needs more tokens than this


def _window(n: int, w: int) -> int:
    return -(-n // w) * w


def _attention_flops(keys: float, n: int, d: int) -> tuple[float, float]:
    """Scores and weighted sum for ``keys`` keys per query on average: 4·n·keys·d forward, twice that back."""
    return 4.0 * n * keys * d, 8.0 * n * keys * d


def _longformer_flops(n, d, scope):  # window 512 (513 keys) on the padded length, plus one global token
    m = _window(n, 512)
    fwd, bwd = _attention_flops(514, m, d)  # the global token is one more key of every query ...
    return fwd + 4.0 * m * d, bwd + 8.0 * m * d  # ... and its query sees every key


# The formulas above, for ``benchmark --list`` (m: the length padded to the reference's window or block).
REFERENCE_FLOPS = {
    "hf-longformer": "4·m·514·d + 4·m·d (window 512 + the global token; m = n padded to 512)",
    "hf-bigbird": "4·d·((m - 128)·8·64 + 128·m) (m = n padded to 64); n ≤ 704: 4·n²·d",
    "hf-modernbert": "4·n·K·d, K = n in every third layer, min(n, 129) in the others (averaged); layer "
    "scope: 4·n²·d (its first layer is global)",
}


def _bigbird_flops(n, d, scope):
    """The first and last blocks global, the others 3 sliding + 2 global + 3 random blocks of keys."""
    m = _window(n, 64)
    if n <= _BIGBIRD_FULL_UNTIL:
        return _attention_flops(n, n, d)
    return _attention_flops(((m - 128) * 8 * 64 + 128 * m) / m, m, d)


def _modernbert_flops(n, d, scope):  # every third layer global (the first one is), the others 129-token local
    local = min(n, 129)
    if scope == "layer":
        return _attention_flops(n, n, d)
    layers = [n if i % 3 == 0 else local for i in range(12)]  # the average over a base model's pattern
    return _attention_flops(sum(layers) / len(layers), n, d)


REFERENCES["lsg"] = [
    Reference(
        "hf-longformer",
        "Longformer",
        lambda s, n: {"attention_window": 512, "max_position_embeddings": _window(n, 512) + 2},
        passthrough=False,
        note=lambda n: (
            f"window 512, first token global; pads {n:,} to {_window(n, 512):,}"
            if n % 512
            else "window 512, first token global"
        ),
        flops=_longformer_flops,
    ),
    Reference(
        "hf-bigbird",
        "BigBird",
        lambda s, n: {
            "attention_type": "block_sparse",
            "block_size": 64,
            "num_random_blocks": 3,
            "max_position_embeddings": _window(n, 64),
        },
        passthrough=False,
        note=lambda n: (
            f"ran FULL attention: block_sparse needs more than {_BIGBIRD_FULL_UNTIL} tokens"
            if n <= _BIGBIRD_FULL_UNTIL
            else f"block_sparse, blocks of 64, 3 random; pads {n:,} to {_window(n, 64):,}"
            if n % 64
            else "block_sparse, blocks of 64, 3 random"
        ),
        flops=_bigbird_flops,
    ),
    Reference(
        "hf-modernbert",
        "ModernBert",
        lambda s, n: {"local_attention": 128, "max_position_embeddings": max(n, 8192), "pad_token_id": 1},
        passthrough=False,
        note=lambda n: (
            "local 128 with every third layer global; transformers runs the local layers as "
            "SDPA with a sliding-window mask (n×n work)"
        ),
        layer="layers.0.attn",
        flops=_modernbert_flops,
    ),
]
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


def resolve_defaults(lengths, attention, reference, repeats, min_time, time_budget) -> dict[str, Any]:
    """The sweep's options where the command line left them out (None): the quick sweep (:data:`QUICK`)
    when neither lengths nor candidates were chosen, else every default length and the full timing."""
    quick = lengths is None and attention is None
    given = dict(
        lengths=lengths, attention=attention, reference=reference or None, repeats=repeats, min_time=min_time,
        time_budget=time_budget,
    )  # fmt: skip
    full = BenchmarkOptions()  # an explicit sweep times as the options' defaults say
    base = (
        QUICK
        if quick
        else dict(repeats=full.repeats, min_time=full.min_time, time_budget=full.time_budget, reference=False)
    )
    out = {k: (v if v is not None else base.get(k)) for k, v in given.items()}
    lengths = out["lengths"]
    out["lengths"] = (
        list(lengths) if isinstance(lengths, list) else parse_lengths(lengths)
    )  # never QUICK's own
    out["quick"] = quick
    return out


def parse_lengths(text: str | None) -> list[int]:
    """``"1024,2048"`` → [1024, 2048] (sorted, unique); non-integers and values below 1 are user errors."""
    if not text:
        return list(DEFAULT_LENGTHS)
    out = set()
    for item in text.split(","):
        try:
            n = int(item.strip())
        except ValueError:
            raise UserError(
                f"--lengths: {item.strip()!r} is not an integer; give e.g. --lengths 1024,2048"
            ) from None
        if n < 1:
            raise UserError(f"--lengths: {n} is not a positive length")
        out.add(n)
    return sorted(out)


@dataclasses.dataclass
class BenchmarkOptions:
    """What ``longattn benchmark`` sweeps; validated in :meth:`check`."""

    scope: str = "layer"
    mode: str = "both"
    lengths: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_LENGTHS))
    attention: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    reference: bool = False
    reference_models: str | None = None  # reference labels measured whatever the selection
    batch: int = 1
    heads: int | None = None
    head_dim: int | None = None
    layers: int | None = None
    model_size: str = "base"
    model: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    threads: int | None = None
    warmup: int = 1
    repeats: int = 5
    min_time: float = 1.0
    dropout: float = 0.1
    gradient_checkpointing: bool = False  # model scope: recompute each layer's activations in the backward
    time_budget: float | None = 120.0
    memory_limit_gb: float | None = None
    isolate: bool = True
    seed: int = 0

    def check(self) -> None:
        """Reject bad values with a :class:`UserError` naming the value and the valid ones."""
        if self.scope not in SCOPES:
            raise UserError(f"unknown scope {self.scope!r}; valid: {', '.join(SCOPES)}")
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.model_size not in PRESETS:
            raise UserError(f"unknown model size {self.model_size!r}; valid: {', '.join(PRESETS)}")
        for name in ("batch", "heads", "head_dim", "layers", "repeats", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.gradient_checkpointing and self.scope != "model":
            raise UserError("--gradient-checkpointing recomputes a model's layers; use it with --scope model")
        if self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout:g}")
        if self.min_time < 0:
            raise UserError(f"--min-time must be 0 or more seconds, got {self.min_time:g}")
        if self.time_budget is not None and self.time_budget < 0:
            raise UserError(f"--time-budget must be 0 (none) or more seconds, got {self.time_budget:g}")
        if self.memory_limit_gb is not None and self.memory_limit_gb <= 0:
            raise UserError(f"--memory-limit must be a positive number of GB, got {self.memory_limit_gb:g}")
        if not self.lengths or min(self.lengths) < 1:
            raise UserError(f"--lengths must be positive, got {self.lengths}")


def model_shape(opts: BenchmarkOptions) -> tuple[dict[str, int], str | None]:
    """The encoder shape measured, and the resolved checkpoint directory (``--model``) if any."""
    if opts.model:
        from longattn_cli.hub import resolve
        from longattn_cli.models.checkpoints import import_config

        directory = resolve(opts.model)
        fixed = [f"--{n.replace('_', '-')}" for n in ("heads", "head_dim", "layers") if getattr(opts, n)]
        if fixed:
            raise UserError(
                f"{', '.join(fixed)} cannot be combined with --model: the checkpoint fixes the shape"
            )
        config = import_config(directory)
        limit = config.max_sequence_length
        too_long = [n for n in opts.lengths if n > limit]
        if too_long and opts.scope == "model":
            raise UserError(
                f"--lengths {too_long[0]} is above the {limit} positions of {opts.model}; use lengths up to {limit}"
            )
        shape = dict(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
        )
        return shape, str(directory)
    shape = dict(PRESETS[opts.model_size], vocab_size=VOCAB_SIZE)
    heads = opts.heads or shape["num_heads"]
    head_dim = opts.head_dim or shape["hidden_size"] // shape["num_heads"]
    shape.update(num_heads=heads, hidden_size=heads * head_dim, num_layers=opts.layers or shape["num_layers"])
    if opts.heads or opts.head_dim:
        shape["intermediate_size"] = 4 * shape["hidden_size"]
    return shape, None


def machine(device: str, threads: int | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    import os
    import platform

    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "memory_gb": _total_memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "gpu": None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _total_memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return None


def _available_memory() -> int | None:
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        return None


def plan(
    opts: BenchmarkOptions,
    candidates: list[Candidate],
    shape: dict[str, int],
    model_dir: str | None,
    device: str,
):
    """Every point of the sweep, in run order: mode, then length, then candidate."""
    for mode in MODES[opts.mode]:
        for n in opts.lengths:
            for cand in (c for c in candidates if mode in c.modes):
                spec = dict(
                    scope=opts.scope,
                    mode=mode,
                    n=n,
                    batch=opts.batch,
                    shape=shape,
                    model_dir=model_dir,
                    candidate=cand.spec(n),
                    dtype=opts.dtype,
                    device=device,
                    warmup=opts.warmup,
                    repeats=opts.repeats,
                    min_time=opts.min_time,
                    dropout=opts.dropout,
                    gradient_checkpointing=opts.gradient_checkpointing,
                    time_budget=opts.time_budget or None,
                    seed=opts.seed,
                )
                yield cand, spec


def algorithm_flops(spec: dict[str, Any]) -> float | None:
    """Floating-point operations one step of a point needs by the algorithms' own counts (None: not counted).

    The mechanism's count (``Attention.flops``, per head and sequence) times heads and batch, plus the layer's
    projections, counted alike for every candidate: q, k, v and output, 8·n·C² forward; at model scope also
    the feed-forward block, 4·n·C·I, in every layer. A backward step costs twice its forward (both gradients
    of every product), except where the mechanism counts its own.
    """
    from longattn_cli.attention import get_mechanism, make_settings

    cand, shape, n = spec["candidate"], spec["shape"], spec["n"]
    settings = dict(cand["settings"])
    if cand["kind"] == "reference":  # the reference's own config wins where it names one of our settings
        settings.update({k: v for k, v in cand.get("config", {}).items() if k in settings})
    c, heads = shape["hidden_size"], shape["num_heads"]
    own = next((r.flops for r in REFERENCES.get(cand["mechanism"], []) if r.label == cand["label"]), None)
    if cand["kind"] == "reference" and own is not None:
        counted = own(n, c // heads, spec["scope"])
    else:
        counted = get_mechanism(cand["mechanism"]).flops(
            make_settings(cand["mechanism"], settings), n, c // heads
        )
    if counted is None:
        return None
    fwd, bwd = (x * heads for x in counted)
    dense = 8.0 * n * c * c + (4.0 * n * c * shape["intermediate_size"] if spec["scope"] == "model" else 0.0)
    fwd, bwd = fwd + dense, bwd + 2 * dense
    layers = shape["num_layers"] if spec["scope"] == "model" else 1
    return spec["batch"] * layers * (fwd + bwd if spec["mode"] == "train" else fwd)


def roofline(point: dict[str, Any], flop: float | None, ceiling: float | None) -> None:
    """Fill ``gflop`` (the step's count), ``gflops`` (achieved) and ``ceiling_share`` of a measured point."""
    point["gflop"] = None if flop is None else flop / 1e9
    point["gflops"] = point["ceiling_share"] = None
    if flop is not None and point["status"] == OK and point.get("time_s"):
        point["gflops"] = flop / point["time_s"] / 1e9
        if ceiling:
            point["ceiling_share"] = point["gflops"] / ceiling


def _best_ceiling(result: dict[str, Any], again: dict[str, Any]) -> None:
    """The ceiling is measured before and after the sweep; on a shared machine one reading can be low, so
    the higher one is the ceiling, and every point's share is taken against it."""
    first = result["machine"]["ceiling"]
    readings = [r.get("gflops") for r in (first, again) if r.get("gflops")]
    if not readings:
        return
    best = dict(first if first.get("gflops") == max(readings) else again, readings_gflops=readings)
    best["method"] = f"{best.get('method', '')}; the higher of the readings before and after the sweep"
    result["machine"]["ceiling"] = best
    for p in result["points"]:
        if p.get("gflops"):
            p["ceiling_share"] = p["gflops"] / best["gflops"]


def compute_ratios(points: list[dict[str, Any]]) -> None:
    """Fill ``vs_reference_*`` (ours ÷ the paired transformers implementation) and ``vs_sdpa_*`` (÷ the SDPA
    baseline) for time and memory, from points of the same run, scope, mode and length."""
    done = {(p["mode"], p["n"], p["label"]): p for p in points if p["status"] == OK}
    # softmax-sdpa is the train baseline only where it is the fused one (--dropout 0: no FUSED candidate)
    train = TRAIN_BASELINES if any(p["label"] == FUSED for p in points) else ("softmax-sdpa",)
    for p in points:
        for key in (
            "vs_reference_time",
            "vs_reference_memory",
            "vs_sdpa_time",
            "vs_sdpa_memory",
            "reference",
            "sdpa_baseline",
        ):
            p[key] = None
        if p["status"] != OK:
            continue
        if p["kind"] == "ours":
            for ref in REFERENCES.get(p["mechanism"], []):
                theirs = done.get((p["mode"], p["n"], ref.label))
                if theirs is not None:
                    p["reference"] = ref.label
                    p["vs_reference_time"], p["vs_reference_memory"] = _ratio(p, theirs)
                    break
        for label in train if p["mode"] == "train" else SDPA_BASELINES:
            base = done.get((p["mode"], p["n"], label))
            if base is not None:
                p["sdpa_baseline"] = label
                p["vs_sdpa_time"], p["vs_sdpa_memory"] = _ratio(p, base)
                break


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, float | None]:
    t = a["time_s"] / b["time_s"] if b["time_s"] else None
    ma, mb = a.get("peak_memory_bytes"), b.get("peak_memory_bytes")
    return t, (ma / mb if ma is not None and mb else None)


def run(
    opts: BenchmarkOptions,
    json_path: str | None = None,
    csv_path: str | None = None,
    plot_path: str | None = None,
) -> dict[str, Any]:
    """Run the sweep with a live table, then write the requested files.

    Returns:
        ``{"machine": {...}, "options": {...}, "points": [...]}``, one point per (mode, length, candidate).
    """
    from longattn_cli.bench import report

    opts.check()
    if plot_path:
        report.require_matplotlib()
    candidates = select_candidates(
        opts.attention, opts.settings, opts.reference, opts.dropout, opts.reference_models
    )
    from longattn_cli.devices import pick_device, pick_dtype  # torch: after the checks that need none

    pick_dtype(opts.dtype)
    device = str(pick_device(opts.device))
    shape, model_dir = model_shape(opts)
    result = {
        "machine": machine(device, opts.threads),
        "options": _options_record(opts, shape, device),
        "points": [],
    }
    runner = _runner(opts, device)
    interrupted = False
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C keeps what was measured
    ceiling = {"ceiling": True, "device": device, "dtype": opts.dtype}
    try:
        result["machine"]["ceiling"] = runner.measure(ceiling)
        _sweep(result, list(plan(opts, candidates, shape, model_dir, device)), runner, device)
        _best_ceiling(result, runner.measure(ceiling))
    except KeyboardInterrupt:  # keep what was measured: the files are written, then the CLI exits 130
        interrupted = result["interrupted"] = True
    finally:
        runner.close()
    if json_path:
        report.write_json(result, json_path)
    if csv_path:
        report.write_csv(result, csv_path)
    if plot_path:
        report.plot(result, plot_path)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _sweep(result: dict[str, Any], specs: list, runner, device: str) -> None:
    """Measure every point in order, appending to ``result["points"]``, with the live table."""
    from longattn_cli.bench import report

    stopped: dict[tuple[str, str], str] = {}  # (label, mode) → the status that ended its sweep
    with report.LiveTable(result, len(specs)) as live:
        for cand, spec in specs:
            point = _point_record(spec)
            live.start(point)
            key = (cand.label, spec["mode"])
            why = (
                cand.reference.unavailable(cand.settings, spec["n"], device.split(":")[0])
                if cand.reference
                else None
            )
            if why:
                point.update(status=UNAVAILABLE, message=why)
            elif key in stopped:
                point.update(status=SKIPPED, message=f"{stopped[key]} at a shorter length")
            else:
                point.update(runner.measure(spec))
                if point["status"] in (TIMEOUT, OOM):
                    stopped[key] = point["status"]
            roofline(point, algorithm_flops(spec), result["machine"]["ceiling"].get("gflops"))
            result["points"].append(point)
            compute_ratios(result["points"])
            live.finish(point)


def _runner(opts: BenchmarkOptions, device: str):
    """Measure in a child process (default) or in this one (``--no-isolate``: faster start, no hard kill)."""
    from longattn_cli.bench.worker import InProcess, Worker

    if not opts.isolate:
        return InProcess(opts.threads)
    limit = None
    if device == "cpu":
        avail = _available_memory()
        limit = (
            int(opts.memory_limit_gb * 2**30)
            if opts.memory_limit_gb
            else (int(avail * 0.9) if avail else None)
        )
    return Worker(opts.threads, limit)


def _point_record(spec: dict[str, Any]) -> dict[str, Any]:
    cand = spec["candidate"]
    return {
        "label": cand["label"],
        "kind": cand["kind"],
        "mechanism": cand["mechanism"],
        "settings": cand.get("config") if cand["kind"] == "reference" else cand["settings"],
        "scope": spec["scope"],
        "mode": spec["mode"],
        "n": spec["n"],
        "batch": spec["batch"],
        "dtype": spec["dtype"],
        "gradient_checkpointing": bool(spec.get("gradient_checkpointing")),
        "status": "running",
        **({"note": cand["note"]} if cand.get("note") else {}),
    }


def _options_record(opts: BenchmarkOptions, shape: dict[str, int], device: str) -> dict[str, Any]:
    out = dataclasses.asdict(opts)
    out.update(shape=shape, device=device)
    return out
