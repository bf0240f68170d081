"""LSG against the published implementation itself: logits of ccdv's LSG modeling code (lsg-converter 0.1.9,
transformers 4.44) on a checkpoint made by the published converter, stored in ``tests/fixtures/lsg_published``
(``generate.py`` there says how to regenerate them). longattn loads the same checkpoint without remote code."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longattn_cli.models.checkpoints import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "lsg_published"
KINDS = ("norm", "pooling", "stride", "block_stride", "bos_pooling", "none")
SETTINGS = {
    "default": dict(block_size=128, sparse_block_size=128, sparsity_factor=2, num_global_tokens=1),
    "small": dict(
        block_size=64, sparse_block_size=32, sparsity_factor=4, num_global_tokens=3, mask_first_token=True
    ),
}
# Lengths that need adaptive padding (1000, 2000) for every type; bos_pooling also at whole blocks (1024,
# 2048), the only lengths where the published code is right for it: it leaves chunks made only of padding
# unmasked (mask.mean() over finfo.min overflows to -inf), which longattn deliberately does not copy.
LENGTHS = {"default": (1000, 2000), "small": (1000,)}
WHOLE_BLOCKS = {"default": (1024, 2048), "small": (1024,)}
VOCAB = 48
STRIDE = 16  # logits are stored at every 16th position (generate.py)


@pytest.fixture(scope="module")
def published():
    return load_file(FIXTURE / "logits.safetensors")


def inputs(n: int) -> torch.Tensor:
    """The generator's inputs (the same seeded draw)."""
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(5, VOCAB, (1, n), generator=g)
    ids[0, 0], ids[0, -1] = 0, 2
    return ids


CASES = [
    (name, kind, n)
    for name in SETTINGS
    for kind in KINDS
    for n in (WHOLE_BLOCKS[name] if kind == "bos_pooling" else LENGTHS[name])
]


@pytest.mark.parametrize(("name", "kind", "n"), CASES, ids=[f"{a}-{b}-{c}" for a, b, c in CASES])
def test_logits_match_the_published_lsg_code(published, name, kind, n):
    model = load_model(str(FIXTURE / "model"), attention_settings=SETTINGS[name] | {"sparsity_type": kind})
    assert model.config.attention == "lsg"
    ids = inputs(n)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    key = f"{name}/{kind}/{n}"
    torch.testing.assert_close(logits[::STRIDE], published[f"{key}/logits"], atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.argmax(-1).to(torch.int16), published[f"{key}/top1"])
