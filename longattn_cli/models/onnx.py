"""``longattn export``: a model as one ONNX graph for every batch size and length, checked against torch.

The graph takes ``input_ids`` and ``attention_mask`` (int64, (batch, length), both dimensions dynamic) and
returns the model's head output: ``logits``, or ``last_hidden_state`` for a bare encoder. While traced, every
mechanism takes its branch-free route (:func:`longattn_cli.attention.base.exporting`), so that the graph holds
no choice made from the example input: one graph is right at every length and padding. The folder holds
``model.onnx``, its tokenizer and ``export.json`` (opset, inputs, outputs, labels and the check's figures);
no ``config.json``, whose ``model_type`` would make transformers warn wherever longattn is not installed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError

OPSET = 18
# Checked lengths: not multiples of any block or landmark size; batch rows full, right- and left-padded.
CHECK_LENGTHS = (17, 157, 1021)
TOLERANCE = 1e-4
FORMATS = ("onnx",)
_LARGE = 1_800_000_000  # bytes of weights beyond which they go to a file beside the graph (protobuf's 2 GB)


class _Graph(torch.nn.Module):
    """The model as a function of two tensors to one tensor: what the ONNX graph computes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def output_name(model) -> str:
    """``logits`` for a model with a head, ``last_hidden_state`` for the bare encoder."""
    return "last_hidden_state" if model.base_model is model else "logits"


def export_problem(model) -> str | None:
    """Why ``model`` cannot be exported (one line naming what to use instead), or None."""
    from longattn_cli.attention.base import Attention

    for module in model.modules():
        if isinstance(module, Attention):
            problem = module.export_problem()
            if problem:
                return problem
    return None


def _needs() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(
            f"longattn export needs {', '.join(missing)}: pip install 'longattn[onnx]' "
            "(onnx, onnxscript and onnxruntime)"
        )


def check_out(out: str | Path, overwrite: bool) -> Path:
    """The output folder, refused in one line where it holds files (without ``overwrite``), is a file, or
    its parent cannot be written."""
    out = Path(out)
    if out.is_file():
        raise UserError(f"--out {str(out)!r} is a file; give a folder for the graph and its tokenizer")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace it")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    try:  # root passes every access check: only making something there tells
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as exc:
        raise UserError(f"--out {str(out)!r} cannot be written: {exc.strerror} in {str(probe)!r}") from None
    return out


def export(
    source: str,
    out: str | Path,
    *,
    attention_settings: dict[str, Any] | None = None,
    opset: int = OPSET,
    overwrite: bool = False,
    check: bool = False,
    lengths: tuple[int, ...] = CHECK_LENGTHS,
) -> dict[str, Any]:
    """Export ``source`` (a checkpoint directory or hub id) to ``out``/model.onnx, with its tokenizer.

    Args:
        source: any checkpoint ``longattn`` loads; the graph computes its own head.
        out: the folder to write (replaced atomically; nothing is left behind on failure).
        attention_settings: attention settings to change first, e.g. ``{"use_expectation": True}``.
        opset: the ONNX opset.
        overwrite: replace a folder that holds files.
        check: compare onnxruntime with torch at ``lengths`` (padded rows included) before writing;
            a difference above :data:`TOLERANCE` is an error and nothing is written.
        lengths: the lengths of the check (clipped to the model's maximum).

    Returns:
        What ``export.json`` holds: ``opset``, ``inputs``, ``outputs``, ``labels``, ``attention``,
        ``settings``, ``max_length``, ``export_seconds``, and with ``check`` the per-length ``check`` rows and ``max_abs_diff``.
    """
    import time

    from longattn_cli.models.checkpoints import load_model
    from longattn_cli.models.tokenizer import load_tokenizer
    from longattn_cli.models.weights import write_folder

    out = check_out(out, overwrite)
    _needs()
    model = load_model(source, attention_settings=attention_settings)
    problem = export_problem(model)
    if problem:
        raise UserError(problem)
    tokenizer = load_tokenizer(source)
    # truncation=True then stops at what the graph has positions for (longer input fails in onnxruntime).
    tokenizer.model_max_length = min(tokenizer.model_max_length, model.config.max_sequence_length)
    config = model.config
    name = output_name(model)
    report: dict[str, Any] = {}

    def fill(folder: Path) -> None:
        start = time.perf_counter()
        program = _trace(model, opset, name)
        large = sum(p.numel() * p.element_size() for p in model.parameters()) > _LARGE
        program.save(folder / "model.onnx", external_data=large)
        report.update(
            source=source,
            opset=opset,
            inputs={"input_ids": ["batch", "length"], "attention_mask": ["batch", "length"]},
            outputs={name: _output_axes(model, name)},
            head=type(model).__name__,
            attention=config.attention,
            settings=dict(config.attention_settings),
            max_length=config.max_sequence_length,
            labels={int(i): n for i, n in config.id2label.items()}
            if "Classification" in type(model).__name__
            else None,
            export_seconds=round(time.perf_counter() - start, 1),
        )
        if check:
            rows = check_graph(folder / "model.onnx", model, lengths)
            report.update(check=rows, max_abs_diff=max(r["max_abs_diff"] for r in rows))
            if not report["max_abs_diff"] <= TOLERANCE:
                worst = max(rows, key=lambda r: r["max_abs_diff"])
                raise UserError(
                    f"the ONNX graph differs from torch by {worst['max_abs_diff']:.2e} (> {TOLERANCE:g}) at "
                    f"{worst['length']} tokens; nothing was written"
                )
        tokenizer.save_pretrained(folder)
        (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")

    write_folder(out, fill)
    report["out"] = str(out)
    return report


def _output_axes(model, name: str) -> list[str]:
    if name == "last_hidden_state":
        return ["batch", "length", "hidden"]
    if "SequenceClassification" in type(model).__name__:
        return ["batch", "labels"]
    return ["batch", "length", "labels" if "TokenClassification" in type(model).__name__ else "vocabulary"]


def _trace(model, opset: int, name: str):
    """``torch.onnx.export`` through ``torch.export`` with dynamic batch and length, quietly."""
    import logging
    import warnings

    graph = _Graph(model).eval()
    ids = torch.randint(5, max(6, min(model.config.vocab_size, 1000)), (2, 37))
    mask = torch.ones_like(ids)
    mask[1, 29:] = 0
    dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            graph,
            (ids, mask),
            dynamo=True,
            dynamic_shapes=(dynamic, dynamic),
            input_names=["input_ids", "attention_mask"],
            output_names=[name],
            opset_version=opset,
            verbose=False,
        )


def check_graph(
    path: str | Path, model, lengths: tuple[int, ...] = CHECK_LENGTHS, seed: int = 0
) -> list[dict]:
    """onnxruntime against torch on random tokens: per length, a batch of three rows (full, the last third
    padding, the first third padding); the largest |Δ| of the outputs at real tokens.

    Returns:
        One row per length: ``length``, ``batch``, ``max_abs_diff``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = _Graph(model).eval()
    gen = torch.Generator().manual_seed(seed)
    pad = model.config.pad_token_id or 0
    rows = []
    limit = model.config.max_sequence_length
    # A length clipped to the model's limit stays odd: not a multiple of any block or landmark count.
    for n in sorted({n if n <= limit else limit - 1 + limit % 2 for n in lengths}):
        ids = torch.randint(0, model.config.vocab_size, (3, n), generator=gen)
        mask = torch.ones_like(ids)
        cut = max(1, n // 3)
        mask[1, n - cut :] = 0
        mask[2, :cut] = 0
        ids = ids.masked_fill(mask == 0, pad)
        with torch.no_grad():
            want = graph(ids, mask)
        got = torch.from_numpy(
            session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        )
        diff = (got - want).abs()
        if diff.dim() >= 2 and diff.shape[1] == n:  # per-token outputs: real tokens only
            diff = diff[mask.bool()]
        rows.append({"length": n, "batch": 3, "max_abs_diff": float(diff.max())})
    return rows


def render(report: dict[str, Any], console) -> None:
    """What was written and, after ``--check``, the differences per length."""
    ((name, axes),) = report["outputs"].items()
    console.print(
        f"[green]saved[/] {report['out']}/model.onnx (opset {report['opset']}, {report['attention']} "
        f"attention, {name} ({', '.join(axes)}), {report['export_seconds']} s)"
    )
    if "check" in report:
        from rich.table import Table

        table = Table(title="onnxruntime against torch")
        table.add_column("length", justify="right")
        table.add_column("rows", justify="left")
        table.add_column("max |Δ|", justify="right")
        for row in report["check"]:
            table.add_row(f"{row['length']:,}", "full, right-, left-padded", f"{row['max_abs_diff']:.1e}")
        console.print(table)
        console.print(f"[green]ok[/]: within {TOLERANCE:g} at every length")
