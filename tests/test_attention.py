"""The attention contract, checked on every registered mechanism, and exact softmax's own numbers."""

import math

import pytest
import torch
from torch.testing import assert_close

from longattn_cli.attention import available, build_attention, get_mechanism, make_settings
from longattn_cli.errors import UserError


def qkv(b=2, h=3, n=20, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def test_softmax_sdpa_equals_explicit_formula_with_mask():
    q, k, v = qkv()
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 13:] = False
    att = build_attention("softmax", {}, 3, 8).eval()
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    assert_close(att(q, k, v, mask), scores.softmax(-1) @ v, rtol=1e-5, atol=1e-6)
    eager = build_attention("softmax", {"implementation": "eager"}, 3, 8).eval()
    assert_close(eager(q, k, v, mask), att(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_softmax_padding_does_not_change_real_tokens():
    q, k, v = qkv(b=1, n=12)
    att = build_attention("softmax", {}, 3, 8).eval()
    pad = [torch.cat([x, torch.randn(1, 3, 7, 8) * 100], dim=2) for x in (q, k, v)]
    mask = torch.ones(1, 19, dtype=torch.bool)
    mask[:, 12:] = False
    assert_close(att(*pad, mask)[:, :, :12], att(q, k, v, None), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", available())
def test_every_mechanism_has_validated_settings_and_variants(name):
    cls = get_mechanism(name)
    assert cls.name == name
    variants = cls.benchmark_variants()
    assert variants
    for settings in variants.values():
        make_settings(name, settings)  # every variant is a valid setting
    with pytest.raises(UserError, match="valid:"):
        make_settings(name, {"not_a_setting": 1})


def test_unknown_mechanism_names_the_valid_ones():
    with pytest.raises(UserError, match="unknown attention 'flash9'; valid: .*softmax"):
        get_mechanism("flash9")


def test_bad_softmax_implementation():
    with pytest.raises(UserError, match="implementation='fast' is not one of sdpa, eager"):
        make_settings("softmax", {"implementation": "fast"})
