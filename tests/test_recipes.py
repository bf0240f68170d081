"""Every shipped recipe loads, names the command that runs it, and builds its model configuration."""

from pathlib import Path

import pytest
import torch
import yaml

from longattn_cli.attention import available
from longattn_cli.errors import UserError
from longattn_cli.training.config import load_recipe, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("**/*.yaml"))


def test_there_are_recipes_for_every_command_and_published_shape():
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPES}
    assert {
        "pretrain/default",
        "pretrain/yoso-4096",
        "pretrain/nystromformer-512",
        "pretrain/nystromformer-4096",
        "pretrain/lsg-base-4096",
    } <= names
    assert {f"pretrain/small-{m}" for m in ("softmax", "yoso", "nystrom", "lsg")} <= names
    assert any(n.startswith("finetune/") for n in names)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_recipe_builds(path):
    top = path.relative_to(ROOT / "recipes").parts[0]
    kind = "finetune" if top == "lra" else top
    first = path.read_text().splitlines()[0]
    relative = path.relative_to(ROOT).as_posix()
    assert first.startswith("# ") and "longattn" in first, "a recipe starts with the command that runs it"
    assert any(relative in line and line.startswith("#") for line in path.read_text().splitlines()[:3])
    raw = yaml.safe_load(path.read_text())
    mechanism = (raw.get("model") or {}).get("attention")
    if mechanism and mechanism not in available():
        pytest.skip(f"attention mechanism {mechanism!r} is not registered in this branch")
    recipe = load_recipe(kind, path)
    if kind == "pretrain" and not recipe.model.source:
        from longattn_cli.models.modeling import LongAttnForMaskedLM
        from longattn_cli.training.pretrain import scratch_config

        config = scratch_config(recipe.model, recipe.data)
        assert config.max_sequence_length == recipe.data.max_length
        with torch.device("meta"):  # the whole model, without allocating its weights
            model = LongAttnForMaskedLM(config)
        assert model.config.attention == recipe.model.scratch_attention()[0]
    if kind == "finetune" and recipe.model.scratch:
        from longattn_cli.models.modeling import HEADS
        from longattn_cli.training.model_setup import fresh_config

        config = fresh_config(
            None,
            recipe.data.max_length,
            recipe.model.attention,
            recipe.model.attention_settings,
            vocab_size=300,
            num_labels=10,
            **recipe.model.scratch,
        )
        assert config.max_sequence_length == recipe.data.max_length
        with torch.device("meta"):
            model = HEADS[recipe.model.task](config)
        assert model.config.attention == recipe.model.attention


def test_overrides_win_and_unknown_keys_list_the_valid_ones():
    recipe = load_recipe(
        "pretrain",
        ROOT / "recipes/pretrain/small-softmax.yaml",
        parse_overrides(
            ["training.max_steps=7", "model.attention_settings.implementation=eager", "data.max_length=128"]
        ),
    )
    assert recipe.training.max_steps == 7 and recipe.data.max_length == 128
    assert recipe.model.attention_settings == {"implementation": "eager"}
    with pytest.raises(
        UserError, match=r"unknown recipe key 'data.max_len'; valid keys in data: source, config"
    ):
        load_recipe("pretrain", None, {"data.max_len": 3})
    with pytest.raises(UserError, match=r"unknown recipe key 'optimizer'; valid keys: model, data, training"):
        load_recipe("pretrain", None, {"optimizer.lr": 3})
    with pytest.raises(
        UserError, match=r"unknown setting\(s\) heads for attention 'nystrom'; valid: conv_kernel_size"
    ):
        load_recipe("pretrain", None, {"model.attention_settings.heads": 3})


def test_finetune_keeps_its_own_defaults_when_a_section_is_given_in_part():
    recipe = load_recipe(
        "finetune", None, {"model.source": "x", "data.source": "y.csv", "training.batch_size": 2}
    )
    assert recipe.training.learning_rate == 3e-5 and recipe.training.output_dir == "runs/finetune"


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_printed_recipe_documents_every_key_and_loads_back(kind, tmp_path):
    from longattn_cli.training.config import describe

    recipe = load_recipe(
        kind, None, {"model.source": "some/dir", "data.source": "train.csv"} if kind == "finetune" else {}
    )
    text = describe(recipe)
    assert all("  # " in line for line in text.splitlines() if line.startswith("  "))
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_recipe(kind, path) == recipe
