"""ELECTRA (discriminator and generator) and ALBERT (shared layers) sources: parity with transformers' own
classes on tiny random checkpoints with padding (fp32, 1e-5), and ``longattn convert`` of each."""

import pytest
import torch
import transformers
from test_checkpoints import batch, real
from torch.testing import assert_close
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

import longattn_cli  # noqa: F401  (registers the family)
from longattn_cli.errors import UserError
from longattn_cli.models.checkpoints import load_model
from longattn_cli.models.modeling import LongAttnForReplacedTokenDetection
from longattn_cli.testing import save_perturbed


def source(family: str, head: str, tok_dir, out, **over):
    """A tiny random transformers ``{family}{head}`` saved to ``out`` with the WordPiece tokenizer."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    common = dict(vocab_size=len(tok), hidden_size=32, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=128, pad_token_id=tok.pad_token_id, num_labels=3)  # fmt: skip
    if family == "Electra":
        config = transformers.ElectraConfig(embedding_size=24, num_hidden_layers=2, **common | over)
    else:  # four layers in two shared groups
        config = transformers.AlbertConfig(
            embedding_size=24, num_hidden_layers=4, num_hidden_groups=2, **common | over
        )
    torch.manual_seed(0)
    ref = getattr(transformers, f"{family}{head}")(config).eval()
    save_perturbed(ref, out, tok_dir)
    return ref


CASES = [
    ("Electra", "ForMaskedLM"),  # the generator
    ("Electra", "ForPreTraining"),  # the discriminator
    ("Electra", "ForSequenceClassification"),
    ("Electra", "ForTokenClassification"),
    ("Electra", "Model"),
    ("Albert", "ForMaskedLM"),
    ("Albert", "ForPreTraining"),
    ("Albert", "ForSequenceClassification"),
    ("Albert", "ForTokenClassification"),
    ("Albert", "Model"),
]


@pytest.mark.parametrize(("family", "head"), CASES, ids=[a + b for a, b in CASES])
def test_outputs_match_transformers_with_padding(family, head, tmp_path, wordpiece_dir, capsys):
    ref = source(family, head, wordpiece_dir, tmp_path)
    ours = load_model(str(tmp_path))
    assert "initialised randomly" not in capsys.readouterr().err  # every weight of the source is mapped
    enc = batch(wordpiece_dir)
    args = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    with torch.no_grad():
        theirs, mine = ref(**args), ours(**args)
    if head == "Model":
        a, b = mine.last_hidden_state, theirs.last_hidden_state
    elif head == "ForPreTraining" and family == "Albert":
        a, b = mine.logits, theirs.prediction_logits  # the MLM head (the sentence-order head is dropped)
    else:
        a, b = mine.logits, theirs.logits
    if head == "ForSequenceClassification":
        assert_close(a, b, rtol=1e-5, atol=1e-5)
    else:
        assert_close(real(a, enc["attention_mask"]), real(b, enc["attention_mask"]), rtol=1e-5, atol=1e-5)


def test_albert_layers_stay_shared(tmp_path, wordpiece_dir):
    source("Albert", "ForMaskedLM", wordpiece_dir, tmp_path)
    ours = load_model(str(tmp_path))
    assert ours.config.num_hidden_layers == 4 and len(ours.longattn.layers) == 2
    ours.save_pretrained(tmp_path / "ours")
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "ours")
    assert len(again.longattn.layers) == 2


def test_albert_inner_groups_are_refused_in_one_line(tmp_path, wordpiece_dir):
    source("Albert", "ForMaskedLM", wordpiece_dir, tmp_path, inner_group_num=2)
    with pytest.raises(UserError, match="inner_group_num=2 is not supported"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    ("family", "head", "auto"),
    [
        ("Electra", "ForMaskedLM", AutoModelForMaskedLM),
        ("Electra", "ForPreTraining", AutoModelForPreTraining),
        ("Albert", "ForMaskedLM", AutoModelForMaskedLM),
    ],
)
def test_convert_keeps_the_head_and_loads_through_auto_classes(
    family, head, auto, tmp_path, wordpiece_dir, capsys
):
    from helpers import run_cli

    src = tmp_path / "src"
    ref = source(family, head, wordpiece_dir, src)
    code, out, err = run_cli(
        ["convert", str(src), "--max-length", "256", "--out", str(tmp_path / "long"), "--check"], capsys
    )
    assert code == 0, err
    assert "agreement" in out or "agreement" in err  # --check ran on the converted model
    long = auto.from_pretrained(tmp_path / "long").eval()
    assert long.config.attention == "lsg" and long.config.max_position_embeddings == 256
    if head == "ForPreTraining":
        assert isinstance(long, LongAttnForReplacedTokenDetection)
    if family == "Albert":
        assert len(long.longattn.layers) == 2  # still shared after conversion
    enc = batch(wordpiece_dir)
    short = enc["input_ids"][1:2, : int(enc["attention_mask"][1].sum())]
    with torch.no_grad():
        mine, theirs = long(input_ids=short).logits, ref(input_ids=short).logits
    # LSG on an input shorter than two blocks is full attention plus the global tokens: close, not equal.
    if head == "ForPreTraining":
        assert ((mine > 0) == (theirs > 0)).float().mean() > 0.8
    else:
        assert (mine.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.8
    if head == "ForMaskedLM":  # fill-mask takes the converted model
        code, out, err = run_cli(
            ["fill-mask", "the [MASK] is here.", "--model", str(tmp_path / "long")], capsys
        )
        assert code == 0, err
