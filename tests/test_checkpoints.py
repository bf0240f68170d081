"""Parity with transformers' own RoBERTa and BERT on tiny random checkpoints (fp32, 1e-5)."""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

import longattn_cli  # noqa: F401  (registers the family)
from longattn_cli.errors import UserError
from longattn_cli.models.checkpoints import load_model
from longattn_cli.models.export import export_roberta
from longattn_cli.models.modeling import LongAttnForMaskedLM, LongAttnModel
from longattn_cli.testing import save_perturbed, tiny_reference

TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Short one.",
    "Attribute references are resolved by looking the name up in the class dictionary.",
]


def batch(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    return tok(TEXTS, padding=True, return_tensors="pt")


def real(x, mask):
    """Values at real (unpadded) tokens only, flattened: padding positions carry no meaning."""
    return x[mask.bool()]


@pytest.mark.smoke
@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_mlm_logits_match_reference_with_padding(family, tmp_path, bpe_dir, wordpiece_dir):
    tok_dir = bpe_dir if family == "roberta" else wordpiece_dir
    ref = tiny_reference(family, tmp_path, "ForMaskedLM", tokenizer_dir=tok_dir)
    ours = load_model(str(tmp_path))
    assert isinstance(ours, LongAttnForMaskedLM)
    enc = batch(tok_dir)
    assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        theirs = ref(**enc).logits
        mine = ours(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert_close(real(mine, enc["attention_mask"]), real(theirs, enc["attention_mask"]), rtol=1e-5, atol=1e-5)
    # Unpadded, one text at a time, gives the same numbers again.
    for i in range(len(TEXTS)):
        n = int(enc["attention_mask"][i].sum())
        with torch.no_grad():
            alone = ours(input_ids=enc["input_ids"][i : i + 1, :n]).logits[0]
            ref_alone = ref(input_ids=enc["input_ids"][i : i + 1, :n]).logits[0]
        assert_close(alone, mine[i, :n], rtol=1e-5, atol=1e-5)
        assert_close(alone, ref_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_base_model_hidden_states_match_reference(family, tmp_path, bpe_dir, wordpiece_dir):
    tok_dir = bpe_dir if family == "roberta" else wordpiece_dir
    ref = tiny_reference(family, tmp_path, "Model", tokenizer_dir=tok_dir)
    ours = load_model(str(tmp_path), head="base")
    assert isinstance(ours, LongAttnModel)
    enc = batch(tok_dir)
    with torch.no_grad():
        theirs = ref(**enc, output_hidden_states=True)
        mine = ours(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True
        )
    m = enc["attention_mask"]
    assert_close(real(mine.last_hidden_state, m), real(theirs.last_hidden_state, m), rtol=1e-5, atol=1e-5)
    assert len(mine.hidden_states) == len(theirs.hidden_states)
    for a, b in zip(mine.hidden_states, theirs.hidden_states, strict=True):
        assert_close(real(a, m), real(b, m), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_sequence_classification_head_matches_reference(family, tmp_path, bpe_dir, wordpiece_dir):
    tok_dir = bpe_dir if family == "roberta" else wordpiece_dir
    ref = tiny_reference(family, tmp_path, "ForSequenceClassification", tokenizer_dir=tok_dir, num_labels=3)
    ours = load_model(str(tmp_path))
    enc = batch(tok_dir)
    with torch.no_grad():
        assert_close(
            ours(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits,
            ref(**enc).logits,
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_token_classification_head_matches_reference(family, tmp_path, bpe_dir, wordpiece_dir):
    tok_dir = bpe_dir if family == "roberta" else wordpiece_dir
    ref = tiny_reference(family, tmp_path, "ForTokenClassification", tokenizer_dir=tok_dir, num_labels=5)
    ours = load_model(str(tmp_path))
    enc = batch(tok_dir)
    m = enc["attention_mask"]
    with torch.no_grad():
        mine = ours(input_ids=enc["input_ids"], attention_mask=m).logits
        assert_close(real(mine, m), real(ref(**enc).logits, m), rtol=1e-5, atol=1e-5)


def test_bare_roberta_model_loads_as_masked_lm_with_new_head(tmp_path, bpe_dir):
    ref = tiny_reference("roberta", tmp_path, "Model", tokenizer_dir=bpe_dir)
    ours = load_model(str(tmp_path), head="masked-lm")
    enc = batch(bpe_dir)
    with torch.no_grad():
        h = ours.longattn(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        assert_close(
            real(h, enc["attention_mask"]),
            real(ref(**enc).last_hidden_state, enc["attention_mask"]),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.smoke
def test_saved_model_reloads_through_auto_classes_as_safetensors(tmp_path, bpe_dir):
    tiny_reference("roberta", tmp_path / "src", "ForMaskedLM", tokenizer_dir=bpe_dir)
    ours = load_model(str(tmp_path / "src"))
    ours.save_pretrained(tmp_path / "ours")
    files = {p.name for p in (tmp_path / "ours").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    enc = batch(bpe_dir)
    with torch.no_grad():
        want = ours(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        got = AutoModelForMaskedLM.from_pretrained(tmp_path / "ours").eval()(**enc).logits
        base = AutoModel.from_pretrained(tmp_path / "ours").eval()(**enc).last_hidden_state
    assert_close(got, want, rtol=0, atol=0)
    assert_close(base, ours.longattn(**enc).last_hidden_state, rtol=0, atol=0)
    cls = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours", num_labels=2)
    assert type(cls).__name__ == "LongAttnForSequenceClassification"


@pytest.mark.smoke
def test_export_to_roberta_round_trips(tmp_path, bpe_dir):
    ref = tiny_reference("roberta", tmp_path / "src", "ForMaskedLM", tokenizer_dir=bpe_dir)
    ours = load_model(str(tmp_path / "src"))
    export_roberta(ours, tmp_path / "back")
    from transformers import RobertaForMaskedLM

    back = RobertaForMaskedLM.from_pretrained(tmp_path / "back").eval()
    enc = batch(bpe_dir)
    with torch.no_grad():
        assert_close(back(**enc).logits, ref(**enc).logits, rtol=0, atol=0)


def test_pickled_weights_load_only_through_weights_only(tmp_path, bpe_dir):
    ref = tiny_reference("roberta", tmp_path, "ForMaskedLM", tokenizer_dir=bpe_dir)
    (tmp_path / "model.safetensors").unlink()
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = load_model(str(tmp_path))
    enc = batch(bpe_dir)
    with torch.no_grad():
        assert_close(
            real(ours(**enc).logits, enc["attention_mask"]),
            real(ref(**enc).logits, enc["attention_mask"]),
            rtol=1e-5,
            atol=1e-5,
        )

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="weights_only"):
        load_model(str(tmp_path))


def test_unsupported_architecture_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UserError, match="unsupported architecture model_type='gpt2'.*supported: .*roberta"):
        load_model(str(tmp_path))


def test_missing_path_and_offline_hub_id_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="unreachable"):
        load_model("uw-madison/yoso-4096")


@pytest.mark.parametrize("head", ["ForMaskedLM", "Model"])
def test_distilbert_matches_reference_with_padding(head, tmp_path, wordpiece_dir, capsys):
    """DistilBERT (its own key names, no token types): logits or hidden states equal transformers' own."""
    import transformers
    from transformers import AutoTokenizer, DistilBertConfig

    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    config = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=128, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    ref = getattr(transformers, f"DistilBert{head}")(config).eval()
    save_perturbed(ref, tmp_path, wordpiece_dir)
    ours = load_model(str(tmp_path))
    assert isinstance(ours, LongAttnForMaskedLM if head == "ForMaskedLM" else LongAttnModel)
    enc = batch(wordpiece_dir)
    with torch.no_grad():
        theirs = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        mine = ours(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    a, b = (x.logits if head == "ForMaskedLM" else x.last_hidden_state for x in (mine, theirs))
    assert_close(real(a, enc["attention_mask"]), real(b, enc["attention_mask"]), rtol=1e-5, atol=1e-5)
    if head == "ForMaskedLM":  # longattn convert takes it too; the result loads through the Auto classes
        from helpers import run_cli

        code, _, err = run_cli(
            ["convert", str(tmp_path), "--max-length", "256", "--out", str(tmp_path / "long")], capsys
        )
        assert code == 0, err
        long = AutoModelForMaskedLM.from_pretrained(tmp_path / "long").eval()
        short = enc["input_ids"][1:2, : int(enc["attention_mask"][1].sum())]
        with torch.no_grad():
            top = long(input_ids=short).logits.argmax(-1), ref(input_ids=short).logits.argmax(-1)
        assert (top[0] == top[1]).float().mean() > 0.8
