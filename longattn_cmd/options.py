"""What ``longattn benchmark`` and ``longattn convert`` take, each option declared once (flag, help, default,
validation; see :mod:`longattn_cmd.declare`). Plain data: the command line's help reads it without importing
torch, transformers or the library, and the library takes these objects as its options."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from longattn_cmd.declare import given, option, validate
from longattn_cmd.errors import UserError

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
SCOPES = ("layer", "model")
MODES = ("forward", "train", "both")
MODEL_SIZES = ("tiny", "small", "base", "large")  # the shapes are longattn_cli.bench.sweep.PRESETS
FULL_COMMAND = "longattn benchmark --attention all --reference --lengths 512,1024,2048,4096,8192,16384"


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


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` (repeatable) → a dict, values parsed as the recipes parse them."""
    from longattn_cli.training.config import parse_overrides

    return parse_overrides(items)


def settings_option(help: str):
    """``--set key=value`` (repeatable), parsed into a dict of attention settings."""
    return option(None, help, "--set", factory=dict, cli_type=list[str], parse=parse_settings)


@dataclasses.dataclass
class BenchmarkOptions:
    """What ``longattn benchmark`` sweeps. With neither ``lengths`` nor ``attention`` chosen on the command
    line, the fields that declare a ``quick`` value take it (the quick sweep, a few minutes on 2 cores)."""

    scope: str = option(
        "layer",
        "layer (one attention sublayer: q/k/v, mechanism, output, norm) or model (whole encoder).",
        choices=SCOPES,
    )
    mode: str = option("both", "forward (inference), train (forward+backward) or both.", choices=MODES)
    lengths: list[int] = option(
        None,
        "Comma-separated sequence lengths.",
        factory=lambda: list(DEFAULT_LENGTHS),
        cli_type=str,
        parse=parse_lengths,
        quick=[1024, 2048, 4096],
    )
    attention: str | None = option(
        None,
        "Comma-separated variant labels or mechanism names, or all (default: every registered variant).",
        "--attention",
        quick="softmax-sdpa,nystrom,lsg-norm,yoso-lsh-ebwd",
    )
    settings: dict[str, Any] = settings_option(
        "Override a setting of every selected mechanism that has it, key=value (repeatable)."
    )
    reference: bool = option(
        False,
        "Also measure transformers' implementations paired with the selected mechanisms: RoBERTa (sdpa), "
        "YOSO, Nyströmformer; Longformer, BigBird and ModernBERT beside LSG.",
        "--reference",
        quick=True,
    )
    reference_models: str | None = option(
        None,
        "Comma-separated reference labels to measure whatever --attention selects, e.g. "
        "hf-longformer,hf-modernbert (see --list).",
    )
    batch: int = option(1, "Batch size.", minimum=1)
    heads: int | None = option(None, "Attention heads (default: the model size's).", minimum=1)
    head_dim: int | None = option(None, "Size of one head (default: the model size's).", minimum=1)
    layers: int | None = option(
        None, "Encoder layers for --scope model (default: the model size's).", minimum=1
    )
    model_size: str = option(
        "base", "Shape preset (base: 12 layers, 768 wide, 12 heads).", choices=MODEL_SIZES
    )
    model: str | None = option(
        None,
        "Measure this checkpoint's shape and weights (directory or hub id) instead of a preset.",
        "--model",
        "-m",
    )
    dtype: str = option("float32", "float32, bfloat16 or float16.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    dropout: float = option(
        0.1,
        "Dropout on hidden states and attention probabilities in train mode (ours and references).",
        within=(0, 1),
    )
    gradient_checkpointing: bool = option(
        False,
        "With --scope model: recompute each layer's activations in the backward, as "
        "training.gradient_checkpointing does (less memory, more time).",
    )
    compile: bool = option(
        False,
        "torch.compile what is measured (each layer of a model, as training.compile does); the first "
        "step's extra time (compilation) and the graph breaks are recorded beside the timings.",
    )
    threads: int | None = option(None, "CPU threads for torch (default: torch's).", minimum=1)
    warmup: int = option(1, "Untimed steps before timing.", minimum=0)
    repeats: int = option(
        5, "Timed steps per point, at least (median and quartiles reported).", minimum=1, quick=2
    )
    min_time: float = option(
        1.0,
        "Repeat short steps until the timed ones add up to this many seconds (at most 200 steps).",
        minimum=0,
        quick=0.0,
    )
    time_budget: float | None = option(
        120.0,
        "Seconds a point may take (0: no limit); longer lengths of a mechanism that runs over are skipped.",
        minimum=0,
        quick=10.0,
    )
    memory_limit_gb: float | None = option(
        None,
        "GB a point may allocate on CPU before it counts as OOM (default: 90% of free memory).",
        "--memory-limit",
        above=0,
    )
    isolate: bool = option(
        True,
        "Measure in a child process that an OOM or overrun cannot take down (--no-isolate: in this one).",
    )
    seed: int = option(0, "Seed for weights and inputs.")

    def check(self) -> None:
        """Reject bad values with a :class:`UserError` naming the value and the valid ones."""
        validate(self)
        if self.gradient_checkpointing and self.scope != "model":
            raise UserError("--gradient-checkpointing recomputes a model's layers; use it with --scope model")
        if not self.lengths or min(self.lengths) < 1:
            raise UserError(f"--lengths must be positive, got {self.lengths}")

    @classmethod
    def from_command_line(cls, values: dict[str, Any]) -> tuple[BenchmarkOptions, bool]:
        """The options from the command line's values (None where not given), and whether this is the quick
        sweep: with neither lengths nor attention given, the fields that declare a quick value take it."""
        quick = values.get("lengths") is None and values.get("attention") is None
        chosen = given(values, cls)
        if quick:
            for field in dataclasses.fields(cls):
                value = field.metadata["cli"].quick
                if value is not None and field.name not in chosen:
                    chosen[field.name] = list(value) if isinstance(value, list) else value
        opts = cls(**chosen)
        if opts.time_budget == 0:
            opts.time_budget = None  # 0 on the command line: no limit
        return opts, quick


QUICK = {
    f.name: f.metadata["cli"].quick
    for f in dataclasses.fields(BenchmarkOptions)
    if f.metadata["cli"].quick is not None
}


@dataclasses.dataclass
class BenchmarkFiles:
    """Where ``longattn benchmark`` writes its results, besides the table."""

    json_path: str | None = option(
        None, "Write every measurement and the machine to this JSON file.", "--json"
    )
    csv_path: str | None = option(
        None, "Write every measurement (one row per point) to this CSV file.", "--csv"
    )
    plot_path: str | None = option(
        None, "Plot time and memory against length (log-log) to this PNG (needs matplotlib).", "--plot"
    )
    list_variants: bool = option(
        False, "List the variant labels, their settings and references, and exit.", "--list"
    )
    overwrite: bool = option(
        False, "Replace result files that exist (by default a run never overwrites another's).", "--overwrite"
    )

    def check(self) -> None:
        """One line, before any measuring, where a result file exists and --overwrite was not given."""
        for flag, path in (("--json", self.json_path), ("--csv", self.csv_path), ("--plot", self.plot_path)):
            if path and Path(path).exists() and not self.overwrite:
                raise UserError(f"{flag} {path!r} exists; name a new file (one per run) or pass --overwrite")


LSG_FLAG = "LSG setting (with --attention lsg); default: the source's, else the mechanism's (see docs)."
LSG_FLAGS = ("block_size", "sparse_block_size", "sparsity_factor", "sparsity_type", "num_global_tokens")


@dataclasses.dataclass
class ConvertOptions:
    """What ``longattn convert`` makes of a short checkpoint."""

    source: str = option(
        None,
        "Checkpoint directory or hub id: RoBERTa, BERT, XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA, ALBERT, "
        "LSG or longattn.",
        argument=True,
    )
    max_length: int = option(4096, "New longest input in tokens; must exceed the source's.", "--max-length")
    out: str | None = option(None, "Output directory (default: <source name>-<max length>).", "--out", "-o")
    attention: str = option(
        "lsg", "Attention of the converted model: lsg, softmax, or any registered one.", "--attention"
    )
    settings: dict[str, Any] = settings_option(
        "Attention setting key=value (repeatable), e.g. --set adaptive=false."
    )
    # The LSG settings' values are validated by the mechanism's settings (longattn_cli.attention.settings).
    block_size: int | None = option(None, LSG_FLAG, "--block-size")
    sparse_block_size: int | None = option(None, LSG_FLAG, "--sparse-block-size")
    sparsity_factor: int | None = option(None, LSG_FLAG, "--sparsity-factor")
    sparsity_type: str | None = option(
        None, LSG_FLAG + " norm, pooling, lsh, stride, block_stride, bos_pooling or none.", "--sparsity-type"
    )
    num_global_tokens: int | None = option(None, LSG_FLAG, "--num-global-tokens")
    random_global_init: bool = option(
        False,
        "Draw global tokens from a Gaussian fitted to the word embeddings instead of BOS/mask.",
        "--random-global-init",
    )
    global_positional_stride: int = option(
        64, "Position rows between consecutive global tokens.", "--global-positional-stride"
    )
    seed: int = option(0, "Seed of every random draw.", "--seed")
    overwrite: bool = option(False, "Replace a non-empty output directory.", "--overwrite")

    def check(self) -> None:
        """Reject bad values with a :class:`UserError` naming the value and the valid ones."""
        validate(self)
        lsg = [name for name in LSG_FLAGS if getattr(self, name) is not None]
        if lsg and self.attention != "lsg":
            flag = "--" + lsg[0].replace("_", "-")
            raise UserError(
                f"{flag} is an LSG setting; it needs --attention lsg (got --attention {self.attention})"
            )

    def attention_settings(self) -> dict[str, Any]:
        """``--set`` values, then the LSG flags given (they win)."""
        return {
            **self.settings,
            **{name: getattr(self, name) for name in LSG_FLAGS if getattr(self, name) is not None},
        }
