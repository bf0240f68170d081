"""`longattn convert`: the published converter's rules, every supported source, heads, re-conversion, errors."""

import json
import re

import pytest
import torch
from helpers import run_cli as run
from torch.testing import assert_close
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

import longattn_cli  # noqa: F401  (registers the family)
from longattn_cli.errors import UserError
from longattn_cli.fill_mask import predict
from longattn_cli.models.checkpoints import load_model
from longattn_cli.models.convert import convert, global_position_rows
from longattn_cli.testing import tiny_lsg_checkpoint, tiny_reference

LSG = {"block_size": 16, "sparse_block_size": 16, "num_global_tokens": 3}


@pytest.mark.smoke
def test_roberta_to_lsg_follows_the_published_rules(roberta_dir, tmp_path):
    out, src, model, tok = convert(str(roberta_dir), 1000, tmp_path / "long", attention_settings=LSG)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "longattn" and cfg["attention"] == "lsg"
    assert cfg["max_position_embeddings"] == 1002 and cfg["attention_settings"]["num_global_tokens"] == 3
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 1000
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".long*"))
    old = src.longattn.embeddings.position_embeddings.weight  # 130 rows: 2 padding rows + 128 positions
    new = model.longattn.embeddings.position_embeddings.weight
    assert new.shape[0] == 1002
    assert_close(new[:2], old[:2], rtol=0, atol=0)  # RoBERTa keeps rows 0-1 and tiles rows 2...
    for i in (0, 127, 128, 500, 999):
        assert_close(new[2 + i], old[2 + i % 128], rtol=0, atol=0)
    words = src.longattn.embeddings.word_embeddings.weight
    glob = model.longattn.embeddings.global_embeddings.weight
    assert_close(glob[0], old[2] + words[tok.bos_token_id], rtol=0, atol=0)  # position 0 + <s>
    assert_close(glob[1], old[2 + 64] + words[tok.mask_token_id], rtol=0, atol=0)  # position stride + <mask>
    # Loadable by AutoModel* and fill-mask; runs on inputs far beyond the source's 128 tokens.
    auto = AutoModelForMaskedLM.from_pretrained(out).eval()
    ids = torch.randint(5, 900, (1, 900))
    with torch.no_grad():
        assert_close(auto(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert predict(["Paris is the <mask> of France."], str(out), top_k=2)[0]["predictions"][0]
    assert type(AutoModel.from_pretrained(out)).__name__ == "LongAttnModel"


def test_bert_tiles_the_whole_table_and_seeds_globals_with_cls(bert_dir, tmp_path):
    out, src, model, tok = convert(
        str(bert_dir), 300, tmp_path / "long", attention_settings=LSG, global_positional_stride=32
    )
    old = src.longattn.embeddings.position_embeddings.weight  # 128 rows
    new = model.longattn.embeddings.position_embeddings.weight
    assert new.shape[0] == 300 and model.config.max_position_embeddings == 300
    assert_close(new[200], old[200 % 128], rtol=0, atol=0)
    e = src.longattn.embeddings
    glob = model.longattn.embeddings.global_embeddings.weight
    token_type = e.token_type_embeddings.weight[
        0
    ]  # BERT globals also get token type 0 (published use_token_ids)
    assert_close(glob[0], old[0] + e.word_embeddings.weight[tok.cls_token_id] + token_type, rtol=0, atol=0)
    assert_close(glob[2], old[64] + e.word_embeddings.weight[tok.mask_token_id] + token_type, rtol=0, atol=0)


def test_global_rows_follow_the_stride_grid():
    # 1024 rows are read as 512 (every other row) laid out 16 x 32 and read column by column: the globals
    # sit 64 positions apart, then start again one kept row (2 positions) further.
    table = torch.arange(1024.0)[:, None].expand(-1, 2)
    rows = global_position_rows(table, 18, 64)[:, 0]
    assert rows.tolist() == [64.0 * i for i in range(16)] + [2.0, 66.0]


def test_random_global_init_is_seeded(roberta_dir, tmp_path):
    a = convert(
        str(roberta_dir), 256, tmp_path / "a", attention_settings=LSG, random_global_init=True, seed=1
    )[2]
    b = convert(
        str(roberta_dir), 256, tmp_path / "b", attention_settings=LSG, random_global_init=True, seed=1
    )[2]
    c = convert(
        str(roberta_dir), 256, tmp_path / "c", attention_settings=LSG, random_global_init=True, seed=2
    )[2]
    ga, gb, gc = (m.longattn.embeddings.global_embeddings.weight for m in (a, b, c))
    assert_close(ga, gb, rtol=0, atol=0)
    assert not torch.equal(ga[1:], gc[1:])
    assert torch.equal(ga[0], gc[0])  # the first global token is still position 0 + <s>


@pytest.mark.parametrize(
    "family,head",
    [("roberta", "ForSequenceClassification"), ("bert", "ForTokenClassification"), ("roberta", "Model")],
)
def test_heads_are_kept_and_softmax_conversion_keeps_short_outputs(
    family, head, tmp_path, bpe_dir, wordpiece_dir
):
    tok_dir = bpe_dir if family == "roberta" else wordpiece_dir
    ref = tiny_reference(family, tmp_path / "src", head, tokenizer_dir=tok_dir, num_labels=3)
    out, src, model, tok = convert(str(tmp_path / "src"), 512, tmp_path / "long", attention="softmax")
    enc = AutoTokenizer.from_pretrained(tok_dir)(
        ["A short text to classify.", "Another one"], padding=True, return_tensors="pt"
    )
    m = enc["attention_mask"].bool()
    with torch.no_grad():
        theirs = ref(**enc)
        mine = load_model(str(out))(**enc)
    theirs = theirs.logits if hasattr(theirs, "logits") else theirs.last_hidden_state
    mine = mine.logits if hasattr(mine, "logits") else mine.last_hidden_state
    if head == "ForSequenceClassification":
        assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        assert (
            type(AutoModelForSequenceClassification.from_pretrained(out)).__name__
            == "LongAttnForSequenceClassification"
        )
    else:
        assert_close(mine[m], theirs[m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["xlm-roberta", "camembert"])
def test_xlm_roberta_and_camembert_sources(model_type, tmp_path, bpe_dir):
    tiny_reference("roberta", tmp_path / "src", tokenizer_dir=bpe_dir)
    cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["architectures"] = [
        "XLMRobertaForMaskedLM" if model_type == "xlm-roberta" else "CamembertForMaskedLM"
    ]
    (tmp_path / "src" / "config.json").write_text(json.dumps(cfg))
    out = convert(str(tmp_path / "src"), 512, tmp_path / "long", attention_settings=LSG)[0]
    assert load_model(str(out)).config.max_sequence_length == 512


def test_reconverting_an_lsg_model_keeps_its_globals_and_settings(roberta_dir, tmp_path):
    first = convert(
        str(roberta_dir), 256, tmp_path / "a", attention_settings=LSG | {"sparsity_type": "bos_pooling"}
    )[2]
    again = convert(str(tmp_path / "a"), 1024, tmp_path / "b")[2]
    assert again.config.attention_settings == first.config.attention_settings
    assert_close(
        again.longattn.embeddings.global_embeddings.weight,
        first.longattn.embeddings.global_embeddings.weight,
        rtol=0,
        atol=0,
    )
    pos_a, pos_b = (
        first.longattn.embeddings.position_embeddings.weight,
        again.longattn.embeddings.position_embeddings.weight,
    )
    assert_close(pos_b[2 + 700], pos_a[2 + 700 % 256], rtol=0, atol=0)
    more = convert(str(tmp_path / "a"), 2048, tmp_path / "c", attention_settings={"num_global_tokens": 5})[2]
    assert_close(
        more.longattn.embeddings.global_embeddings.weight[:3],
        first.longattn.embeddings.global_embeddings.weight,
        rtol=0,
        atol=0,
    )


def test_published_lsg_checkpoint_converts_to_longer(tmp_path, bpe_dir):
    _, table = tiny_lsg_checkpoint(
        tmp_path / "src",
        bpe_dir,
        block_size=8,
        sparse_block_size=8,
        sparsity_factor=2,
        sparsity_type="pooling",
        num_global_tokens=2,
    )
    model = convert(str(tmp_path / "src"), 512, tmp_path / "long")[2]
    assert model.config.attention == "lsg" and model.config.attention_settings["sparsity_type"] == "pooling"
    assert_close(model.longattn.embeddings.global_embeddings.weight, table[:2], rtol=0, atol=0)


def test_failed_conversion_leaves_nothing(roberta_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        convert(str(roberta_dir), 256, tmp_path / "out", attention_settings=LSG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.smoke
def test_cli_convert_with_check_and_overwrite(roberta_dir, tmp_path, capsys):
    out = tmp_path / "long"
    args = [
        "convert",
        str(roberta_dir),
        "--max-length",
        "256",
        "--out",
        str(out),
        "--block-size",
        "16",
        "--sparse-block-size",
        "16",
        "--sparsity-type",
        "bos_pooling",
    ]
    code, stdout, err = run(args + ["--check", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "top-1 agreement" in stdout and "largest logit difference" in stdout and "tokens/s" in stdout
    code, _, err = run(args, capsys)
    assert code == 2 and "exists and is not empty; pass --overwrite" in err
    code, _, err = run(args + ["--overwrite", "--sparsity-type", "stride"], capsys)
    assert code == 0, err
    assert load_model(str(out)).config.attention_settings["sparsity_type"] == "stride"
    assert [p.name for p in tmp_path.iterdir()] == ["long"]


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--max-length", "100"], r"--max-length=100 is not above the source's length \(128 tokens\)"),
        (
            ["--block-size", "6", "--sparsity-factor", "4"],
            "block_size=6 is not divisible by sparsity_factor=4",
        ),
        (
            ["--sparsity-type", "dense"],
            "sparsity_type='dense' is not one of norm, pooling, lsh, stride, block_stride, bos_pooling, none",
        ),
        (
            ["--attention", "softmax", "--block-size", "64"],
            "--block-size is an LSG setting; it needs --attention lsg",
        ),
        (["--attention", "bogus"], "unknown attention 'bogus'; valid: .*lsg.*softmax"),
        (["--global-positional-stride", "48"], "--global-positional-stride=48 must divide 512"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, pattern, roberta_dir, tmp_path, capsys):
    code, _, err = run(["convert", str(roberta_dir), "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and re.search(pattern, err), err
    assert not (tmp_path / "o").exists()


def test_unsupported_source_architecture(tmp_path, capsys):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    code, _, err = run(["convert", str(tmp_path / "gpt"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unsupported architecture model_type='gpt2'" in err


def test_existing_non_empty_output_is_refused_before_loading(roberta_dir, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty"):
        convert(str(roberta_dir), 4096, tmp_path / "o")
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"
