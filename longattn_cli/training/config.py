"""Arguments of the commands: ``key=value`` overrides, and the dataclasses of a training recipe.

A recipe is a YAML file with three sections, ``model``, ``data`` and ``training``, whose keys are the fields of
the dataclasses below (the field docs are the reference). ``key=value`` overrides with dotted keys
(``training.max_steps=10``, ``model.attention_settings.num_landmarks=32``) are applied on top and always win.
Unknown keys are rejected with the list of valid ones. The dataclass defaults of :class:`PretrainRecipe` are
the embedded default recipe that ``longattn pretrain`` runs with no arguments.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from longattn_cli.errors import UserError


class RecipeLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true and false. PyYAML follows YAML 1.1, where yes, no, on and off
    are booleans too, so ``mixed_precision: no`` would arrive as false."""


_BOOL = "tag:yaml.org,2002:bool"
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_WORDS = {"yes": True, "on": True, "no": False, "off": False}  # accepted where a field is a boolean


def load_yaml(text: str) -> Any:
    """Parse recipe YAML (see :class:`RecipeLoader`)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str) -> Any:
    """A YAML scalar: ``8`` → 8, ``false`` → False, ``1e-4`` → 0.0001, ``null`` → None, else the string."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _is_float(value):  # YAML 1.1 reads "1e-4" as a string
        return float(value)
    return value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b.c": "x"}``; a malformed item is a :class:`UserError`."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


def _doc(text: str, default: Any = None, factory: Any = dataclasses.MISSING):
    """A dataclass field whose documentation travels with it (shown by ``--help`` and the README)."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"doc": text})
    return dataclasses.field(default=default, metadata={"doc": text})


def default_cache_dir() -> str:
    """Where processed datasets and trained tokenizers are kept (``$LONGATTN_CACHE`` or ``~/.cache/longattn``)."""
    return os.environ.get("LONGATTN_CACHE") or str(Path("~/.cache/longattn").expanduser())


# From scratch with model.attention null. Measured on 2 CPU cores at 4,096 tokens (README, "pretrain"):
# Nyströmformer takes the most steps per second, and its 9-wide convolution over the values gives every token
# its neighbours from the first step, which takes masked-LM training off the unigram plateau within minutes.
SCRATCH_ATTENTION = ("nystrom", {"conv_kernel_size": 9})
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt")
PRECISIONS = ("auto", "no", "bf16", "fp16")
TASKS = ("sequence-classification", "token-classification")
PROBLEM_TYPES = ("auto", "single_label_classification", "multi_label_classification", "regression")


def _positive(section: str, **values: Any) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{section}.{name} must be positive, got {value}")


def _check_attention(attention: str | None, settings: dict[str, Any]) -> None:
    """Validate a mechanism name and its settings now, so that a typo fails before any data is read."""
    if attention is None:
        return
    from longattn_cli.attention import make_settings

    make_settings(attention, settings)


@dataclasses.dataclass
class ModelConfig:
    """What every recipe's ``model`` section holds."""

    source: str | None = _doc(
        "checkpoint directory or hub id to start from (ours, RoBERTa, BERT, YOSO, Nyströmformer, LSG)"
    )
    tokenizer: str | None = _doc("tokenizer directory or hub id; null = the source checkpoint's")
    attention: str | None = _doc(
        "attention mechanism (softmax, yoso, nystrom, lsg); null keeps the checkpoint's"
    )
    attention_settings: dict[str, Any] = _doc(
        "the mechanism's settings, e.g. {num_landmarks: 64}", factory=dict
    )
    freeze: list[str] = _doc(
        "parameter-name patterns (fnmatch) to keep frozen, e.g. ['longattn.layers.0.*']", factory=list
    )
    train_only: list[str] = _doc(
        "if set, train only parameters matching these patterns; all others are frozen", factory=list
    )
    gradient_checkpointing: bool = _doc("recompute activations in the backward pass to save memory", False)
    attention_dropout: float | None = _doc(
        "dropout on attention probabilities; null keeps the checkpoint's (non-zero values take softmax off its fused kernel)"
    )

    def __post_init__(self):
        _check_attention(self.attention, self.attention_settings)
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise ValueError(f"model.attention_dropout must be in [0, 1), got {self.attention_dropout}")


@dataclasses.dataclass
class PretrainModelConfig(ModelConfig):
    """``model`` section of a pretraining recipe: the architecture of a model trained from scratch."""

    attention: str | None = _doc(
        "attention mechanism (softmax, yoso, nystrom, lsg); null = nystrom with a 9-wide convolution from "
        "scratch, or the source checkpoint's"
    )
    tokenizer: str | None = _doc(
        "tokenizer directory or hub id; null = the source's, or (from scratch) a byte-level BPE trained on the corpus"
    )
    vocab_size: int = _doc("vocabulary of a tokenizer trained on the corpus", 4096)
    hidden_size: int = _doc("width of the residual stream (from scratch)", 128)
    num_hidden_layers: int = _doc("encoder layers (from scratch)", 2)
    num_attention_heads: int = _doc("attention heads per layer (from scratch)", 4)
    intermediate_size: int = _doc("feed-forward width (from scratch)", 512)
    dropout: float = _doc("dropout on embeddings and residual branches (from scratch)", 0.1)
    attention_dropout: float | None = _doc(
        "dropout on attention probabilities; 0 keeps softmax on torch's fused kernel, which long inputs need",
        0.0,
    )

    def scratch_attention(self) -> tuple[str, dict[str, Any]]:
        """The mechanism and settings of a model built from scratch: ``model.attention``, or by default
        Nyströmformer with a depthwise convolution over the values (:data:`SCRATCH_ATTENTION`)."""
        if self.attention is not None:
            return self.attention, dict(self.attention_settings)
        name, defaults = SCRATCH_ATTENTION
        return name, {**defaults, **self.attention_settings}

    def __post_init__(self):
        super().__post_init__()
        if self.attention is None and self.source is None:  # from scratch: the default mechanism is built
            _check_attention(*self.scratch_attention())
        _positive(
            "model",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
        )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not a multiple of model.num_attention_heads={self.num_attention_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


# Fields of LongAttnConfig that a recipe's model.scratch may not set: the tokenizer, data.max_length and
# model.attention decide them.
_DERIVED = {
    "vocab_size",
    "max_position_embeddings",
    "position_offset",
    "attention",
    "attention_settings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "kwargs",
    "self",
}


def _check_scratch(scratch: dict[str, Any]) -> None:
    if not scratch:
        return
    import inspect

    from longattn_cli.models.modeling import LongAttnConfig

    valid = sorted(set(inspect.signature(LongAttnConfig.__init__).parameters) - _DERIVED)
    unknown = sorted(set(scratch) - set(valid))
    if unknown:
        raise ValueError(f"model.scratch: unknown field(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


@dataclasses.dataclass
class FinetuneModelConfig(ModelConfig):
    """``model`` section of a fine-tuning recipe: the starting checkpoint and the head."""

    task: str = _doc("sequence-classification or token-classification", "sequence-classification")
    problem_type: str = _doc(
        "auto (from the label column), single_label_classification, multi_label_classification or regression",
        "auto",
    )
    dropout: float | None = _doc("override the checkpoint's hidden and classifier dropout")
    scratch: dict[str, Any] = _doc(
        "train from scratch (model.source: null, model.tokenizer required): LongAttnConfig fields of the "
        "architecture, e.g. {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
        "intermediate_size: 128, classifier_pooling: mean}",
        factory=dict,
    )

    def __post_init__(self):
        super().__post_init__()
        _check_scratch(self.scratch)
        if self.task not in TASKS:
            raise ValueError(f"model.task={self.task!r} is not one of {', '.join(TASKS)}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"model.problem_type={self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}"
            )
        if self.task == "token-classification" and self.problem_type not in (
            "auto",
            "single_label_classification",
        ):
            raise ValueError(
                f"model.problem_type={self.problem_type!r} does not apply to token-classification"
            )


@dataclasses.dataclass
class DataConfig:
    """What every recipe's ``data`` section holds."""

    source: str | None = _doc("a local file (txt, json, jsonl, csv, parquet), or a hub dataset name")
    config: str | None = _doc("the hub dataset's configuration name (e.g. wikitext-103-raw-v1)")
    split: str = _doc("the training split of a hub dataset", "train")
    validation: str | None = _doc("validation data: a split name of the hub dataset, or a local file")
    streaming: bool = _doc("stream a hub dataset instead of downloading it whole (for large corpora)", False)
    text_column: str = _doc("column holding the text (token classification: the list of words)", "text")
    max_length: int = _doc("tokens per example, special tokens included", 512)
    max_examples: int | None = _doc("use only the first N raw examples of each split (quick runs)", None)
    cache_dir: str = _doc(
        "where processed datasets and trained tokenizers are cached", factory=default_cache_dir
    )

    def __post_init__(self):
        _positive("data", max_length=self.max_length, max_examples=self.max_examples)


@dataclasses.dataclass
class PretrainDataConfig(DataConfig):
    """``data`` section of a pretraining recipe."""

    source: str | None = _doc(
        "python-docs (English text shipped with CPython), a local file (txt, json, jsonl, csv, parquet) or a hub dataset",
        "python-docs",
    )
    max_length: int = _doc("tokens per packed block, special tokens included", 4096)
    mlm_probability: float = _doc(
        "fraction of tokens masked (of those: 80% <mask>, 10% random, 10% kept)", 0.15
    )
    whole_word_mask: bool = _doc("mask all sub-tokens of a chosen word together", False)
    streaming_examples: int = _doc(
        "packed blocks per epoch when streaming, to turn training.epochs into steps (a stream has no length)",
        10_000,
    )
    validation_split: float = _doc(
        "with no data.validation: fraction of the documents held out (seeded) for validation; 0 = none",
        0.1,
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.validation_split < 1:
            raise ValueError(f"data.validation_split must be in [0, 1), got {self.validation_split}")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"data.mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.max_length < 8:
            raise ValueError(
                f"data.max_length={self.max_length} is too short to pack documents; use at least 8"
            )


@dataclasses.dataclass
class FinetuneDataConfig(DataConfig):
    """``data`` section of a fine-tuning recipe."""

    test: str | None = _doc("test data (predictions are written for it): a split name or a local file")
    text_pair_column: str | None = _doc("second text column for sentence-pair tasks")
    label_column: str = _doc(
        "column holding the label(s): int/str (single), list (multi-label), float (regression), list per word (token)",
        "label",
    )
    validation_examples: int | None = _doc(
        "evaluate during training on a seeded random N of the validation examples (null = all); the test split is always scored whole",
        None,
    )

    def __post_init__(self):
        super().__post_init__()
        _positive("data", validation_examples=self.validation_examples)


@dataclasses.dataclass
class TrainingConfig:
    """``training`` section: the loop, the optimizer and the checkpoints."""

    output_dir: str = _doc("where checkpoints, metrics and the final model go", "runs/pretrain-default")
    seed: int = _doc("seed of initialisation, data order, masking and dropout", 0)
    max_steps: int | None = _doc("optimizer steps; null = epochs × steps per epoch", 600)
    epochs: float = _doc("passes over the training data when max_steps is null", 1.0)
    batch_size: int = _doc("examples per process per micro-batch", 1)
    gradient_accumulation_steps: int = _doc("micro-batches per optimizer step", 1)
    auto_batch_size: bool = _doc(
        "on out-of-memory, halve the micro-batch and double accumulation (same effective batch) and retry",
        False,
    )
    group_by_length: bool | None = _doc(
        "batch examples of similar length together (less padding); null = on when lengths vary", None
    )
    learning_rate: float = _doc("peak learning rate (AdamW)", 2e-3)
    weight_decay: float = _doc("AdamW weight decay (not applied to biases and LayerNorms)", 0.01)
    warmup_steps: int = _doc("linear warm-up steps", 20)
    scheduler: str = _doc(f"learning-rate schedule after warm-up: {', '.join(SCHEDULERS)}", "linear")
    max_grad_norm: float | None = _doc("clip the gradient norm to this; null = no clipping", 1.0)
    mixed_precision: str = _doc("auto (bf16 where the GPU supports it), no, bf16 or fp16", "auto")
    compile: bool = _doc(
        "torch.compile each encoder layer; the graph breaks are named after the first step (off: on CPU no "
        "mechanism measured faster compiled, see docs/training.md#torchcompile-and-bf16)",
        False,
    )
    log_every: int = _doc("steps between metric lines in metrics.jsonl", 1)
    eval_every: int | None = _doc("steps between evaluations; null = once per epoch (or at the end)", 200)
    save_every: int | None = _doc("steps between checkpoints; null = only at the end", 200)
    keep_last: int = _doc("checkpoints to keep", 2)
    metric_for_best: str | None = _doc(
        "evaluation metric that picks the best checkpoint (default: accuracy, mse or loss)"
    )
    resume: str | None = _doc("latest, or a checkpoint directory, to continue from")
    overwrite: bool = _doc("start afresh in an output directory that holds another run's checkpoints", False)

    def __post_init__(self):
        _positive(
            "training",
            max_steps=self.max_steps,
            epochs=self.epochs,
            batch_size=self.batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.learning_rate,
            log_every=self.log_every,
            eval_every=self.eval_every,
            save_every=self.save_every,
            keep_last=self.keep_last,
            max_grad_norm=self.max_grad_norm,
        )
        if self.warmup_steps < 0:
            raise ValueError(f"training.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"training.scheduler={self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"training.mixed_precision={self.mixed_precision!r} is not one of {', '.join(PRECISIONS)}"
            )


def _finetune_training() -> TrainingConfig:
    return TrainingConfig(
        output_dir="runs/finetune",
        max_steps=None,
        epochs=3.0,
        batch_size=8,
        learning_rate=3e-5,
        warmup_steps=0,
        save_every=None,
        eval_every=None,
        log_every=10,
    )


@dataclasses.dataclass
class PretrainRecipe:
    """A pretraining run; its defaults are the embedded default recipe (``longattn pretrain``)."""

    model: PretrainModelConfig = dataclasses.field(default_factory=PretrainModelConfig)
    data: PretrainDataConfig = dataclasses.field(default_factory=PretrainDataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)


@dataclasses.dataclass
class FinetuneRecipe:
    """A fine-tuning run; ``model.source`` (or ``model.scratch`` + ``model.tokenizer``) and ``data.source``
    have no default."""

    model: FinetuneModelConfig = dataclasses.field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = dataclasses.field(default_factory=FinetuneDataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=_finetune_training)

    def __post_init__(self):
        if self.model.source and self.model.scratch:
            raise UserError(
                "model.scratch describes a model trained from scratch; it cannot go with model.source"
            )

    def check_complete(self) -> None:
        """What a run needs and a printed recipe may leave open: the model and the data."""
        if not self.model.source and not (self.model.scratch and self.model.tokenizer):
            raise UserError(
                "model.source is required: the checkpoint to fine-tune (directory or hub id); "
                "or, to train from scratch, model.scratch (the architecture) and model.tokenizer"
            )
        if not self.data.source:
            raise UserError("data.source is required: a local file or a hub dataset name")


RECIPES = {"pretrain": PretrainRecipe, "finetune": FinetuneRecipe}


def to_dict(recipe: Any) -> dict[str, Any]:
    """The recipe as plain nested dicts (what checkpoints record and ``--print-recipe`` shows)."""
    return dataclasses.asdict(recipe)


def describe(recipe: Any) -> str:
    """The recipe as YAML, every key followed by its field doc as a comment (``--print-recipe``)."""
    lines = []
    for section in dataclasses.fields(recipe):
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(getattr(recipe, section.name)):
            value = getattr(getattr(recipe, section.name), f.name)
            text = (
                yaml.safe_dump(value, default_flow_style=True, width=10_000)
                .strip()
                .removesuffix("\n...")
                .strip()
            )
            lines.append(f"  {f.name}: {text}  # {f.metadata.get('doc', '')}")
    return "\n".join(lines) + "\n"


def load_recipe(
    kind: str,
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    complete: bool = True,
):
    """Build the recipe of command ``kind`` from a YAML file (optional) and dotted overrides (which win).

    Args:
        kind: ``pretrain`` or ``finetune``.
        path: a YAML recipe; ``None`` starts from the dataclass defaults.
        overrides: ``{"training.max_steps": 10, ...}`` as parsed by :func:`parse_overrides`.
        complete: require what a run needs (fine-tuning: model.source and data.source); False to print one.

    Raises:
        UserError: unreadable file, unknown key (the message lists the valid ones), wrongly typed or invalid value.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    recipe = _build(RECIPES[kind], tree, where="")
    if complete and hasattr(recipe, "check_complete"):
        recipe.check_complete()
    return recipe


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"recipe {str(path)!r} does not exist")
    try:
        tree = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(tree, dict):
        raise UserError(f"recipe {path} must be a mapping with sections model, data, training")
    return tree


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _build(cls: type, values: dict[str, Any], where: str):
    """Instantiate dataclass ``cls`` from ``values``, recursing into nested dataclasses, checking keys and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        label = f"{where}{unknown[0]}"
        raise UserError(
            f"unknown recipe key {label!r}; valid keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"recipe section {where + name!r} must be a mapping, got {value!r}")
            # A section given in part keeps this recipe's defaults (finetune's differ from pretrain's) elsewhere.
            base = {f.name: getattr(fields[name].default_factory(), f.name) for f in dataclasses.fields(hint)}
            kwargs[name] = _build(hint, {**base, **value}, where=f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, where + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"recipe: {exc}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type (ints are accepted where floats are expected)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UserError:
                pass
        raise UserError(f"{key} must be {_type_name(hint)}, got {value!r}")
    if origin is list:
        if isinstance(value, str):  # a single pattern given on the command line
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"{key} must be a list, got {value!r}")
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and isinstance(value, str) and value.lower() in _WORDS:
        return _WORDS[value.lower()]
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a split or config name that happens to look like a number
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise UserError(f"{key} must be {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args) + (
            " or null" if type(None) in typing.get_args(hint) else ""
        )
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))
