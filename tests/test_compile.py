"""``training.compile`` and ``longattn benchmark --compile``: layers compiled in place, graph breaks named, and
compiled training losing what eager training loses (within 1e-4)."""

import json
from collections import Counter

import pytest
import torch
from helpers import TINY_PRETRAIN
from helpers import run_cli as cli

from longattn_cli.models.compiled import compile_layers, describe_breaks
from longattn_cli.models.modeling import LongAttnConfig, LongAttnForMaskedLM
from longattn_cli.testing import python_docs_text


def test_layers_compile_in_place_and_keep_their_keys():
    """Each encoder layer is compiled where it stands: the model keeps its class and its state_dict keys (no
    ``_orig_mod.``), so checkpoints and save_pretrained see the same model (compilation waits for a call)."""
    config = LongAttnConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
    )
    model = LongAttnForMaskedLM(config)
    keys = list(model.state_dict())
    assert compile_layers(model) == 3
    assert type(model) is LongAttnForMaskedLM and list(model.state_dict()) == keys


def test_graph_breaks_are_described_in_one_line():
    assert describe_breaks(Counter()) == "no graph breaks"
    breaks = Counter({"Unsupported Tensor.item() call": 3, "Tensor.random_ op": 6, "other": 1})
    assert describe_breaks(breaks, most=2) == (
        "10 graph breaks: Tensor.random_ op (×6); Unsupported Tensor.item() call (×3); 1 more"
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "docs.txt").write_text("\n\n".join(python_docs_text()[:200]) + "\n")
    return d / "docs.txt"


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["softmax", "nystrom", "yoso", "lsg"])
def test_compiled_pretraining_loses_what_eager_loses(attention, tmp_path, corpus, capsys):
    """Three steps of the default pretraining, eager and with training.compile=true: the same loss at every
    step within 1e-4, and the run names its graph breaks after the first step."""
    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"run-{compiled}"
        code, stdout, err = cli(
            [
                "pretrain", *TINY_PRETRAIN, f"model.attention={attention}", f"data.source={corpus}",
                f"data.cache_dir={tmp_path / 'cache'}", f"training.output_dir={out}", "training.max_steps=3",
                "model.dropout=0", f"training.compile={str(compiled).lower()}", "training.log_every=1",
            ],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [r["loss"] for r in rows if "loss" in r and "step" in r]
        assert ("torch.compile:" in stdout + err) == compiled
    assert len(losses[True]) == 3
    torch.testing.assert_close(losses[True], losses[False], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_benchmark_compile_records_compile_time_and_graph_breaks(tmp_path, capsys):
    out = tmp_path / "b.json"
    code, stdout, err = cli(
        [
            "benchmark", "--scope", "model", "--model-size", "tiny", "--mode", "train", "--lengths", "64",
            "--attention", "softmax-sdpa", "--dropout", "0", "--repeats", "1", "--min-time", "0", "--compile",
            "--json", str(out),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    points = json.loads(out.read_text())["points"]
    assert points and all(p["compile"] and p["compile_s"] >= 0 and p["graph_breaks"] >= 0 for p in points)
    assert "compiled in" in stdout
