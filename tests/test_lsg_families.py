"""The converter against the published one for DistilBERT, ELECTRA (generator and discriminator) and ALBERT:
``longattn convert`` of a tiny source gives the same weights as lsg-converter 0.1.9 made of it, and longattn
runs the published result as ccdv's own LSG code does (``tests/fixtures/lsg_families``; its ``generate.py``
says how to regenerate it in a side environment with transformers 4.44)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from longattn_cli.models.checkpoints import load_model
from longattn_cli.models.convert import convert

FIXTURE = Path(__file__).parent / "fixtures" / "lsg_families"
NAMES = ("distilbert", "electra-generator", "electra-discriminator", "albert")
LSG = dict(block_size=32, sparse_block_size=32, sparsity_factor=2, num_global_tokens=2, sparsity_type="norm")
LENGTHS = (300, 256)  # one with adaptive padding, one of whole blocks
VOCAB, SPECIAL, STRIDE = 57, 5, 8


def inputs(n: int) -> torch.Tensor:
    """The generator's inputs (the same seeded draw)."""
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(SPECIAL, VOCAB, (1, n), generator=g)
    ids[0, 0], ids[0, -1] = 2, 3
    return ids


@pytest.mark.parametrize("name", NAMES)
def test_longattn_runs_the_published_conversion_as_its_own_code(name):
    published = load_file(FIXTURE / "logits.safetensors")
    model = load_model(str(FIXTURE / name / "published"))
    assert model.config.attention == "lsg"
    assert model.config.attention_settings["block_size"] == 32
    for n in LENGTHS:
        ids = inputs(n)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        assert_close(logits[::STRIDE], published[f"{name}/{n}"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_convert_gives_the_published_converters_weights(name, tmp_path):
    out, _, ours, _ = convert(
        str(FIXTURE / name / "source"), max_length=512, out=tmp_path / "long", attention_settings=LSG
    )
    theirs = load_model(str(FIXTURE / name / "published"))
    assert {k: v for k, v in ours.config.attention_settings.items() if k in LSG} == LSG
    mine, want = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == want.keys()
    if name == "albert":
        # The published converter loses ALBERT's MLM bias (its output has zeros there: the bias is tied to the
        # decoder's and re-initialised); longattn keeps the source's, which its logits depend on.
        source = load_file(FIXTURE / name / "source" / "model.safetensors")["predictions.bias"]
        assert torch.equal(mine["lm_head.bias"], source) and not want["lm_head.bias"].any()
        want["lm_head.bias"] = source
    for k in want:
        assert_close(mine[k], want[k], atol=1e-6, rtol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    if name == "albert":
        assert len(ours.longattn.layers) == 2  # still shared
