"""Data for training: every local format through `datasets`, packing, and the statistics of MLM masking."""

import json

import pytest
import torch

from longattn_cli.errors import UserError
from longattn_cli.testing import python_docs_text
from longattn_cli.training.config import load_recipe
from longattn_cli.training.data import MaskingCollator, check_column, load_raw, pack, source_fingerprint
from longattn_cli.training.sampling import Order

pytestmark = pytest.mark.usefixtures("one_thread")


def data_section(tmp_path, **over):
    return load_recipe(
        "pretrain",
        None,
        {"data.cache_dir": str(tmp_path / "cache"), **{f"data.{k}": v for k, v in over.items()}},
    ).data


@pytest.mark.parametrize("suffix", ["txt", "jsonl", "json", "csv", "parquet"])
def test_every_local_format_loads_with_the_named_column(tmp_path, suffix):
    texts = python_docs_text()[:20]
    path = tmp_path / f"corpus.{suffix}"
    if suffix == "txt":
        path.write_text("\n\n".join(texts) + "\n")
        column = "text"
    else:
        import datasets

        column = "body"
        ds = datasets.Dataset.from_dict({"body": texts, "n": list(range(len(texts)))})
        {"jsonl": ds.to_json, "json": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[suffix](
            str(path)
        )
    d = data_section(tmp_path, source=str(path), text_column=column)
    raw = load_raw(d.source, d.split, d)
    check_column(raw, column, ("text",), "data.source")
    assert [x.strip() for x in raw[column]] == [t.strip() for t in texts]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_without_rows_names_the_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_text("text,label\n" if suffix == ".csv" else "\n")
    data = load_recipe("pretrain", None, {"data.source": str(path), "data.cache_dir": str(tmp_path)}).data
    with pytest.raises(UserError, match=f"data.source: file {path} has no rows"):
        load_raw(str(path), "train", data)


def test_packing_makes_full_blocks_with_separators(tmp_path, bpe_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    path = tmp_path / "c.jsonl"
    docs = python_docs_text()[:50]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    d = data_section(tmp_path, source=str(path), max_length=128)
    packed, key, hit = pack(load_raw(d.source, d.split, d), tok, d, source_fingerprint(d.source, d.split, d))
    stream = [t for doc in tok(docs)["input_ids"] for t in doc]
    assert not hit and len(packed) == len(stream) // 128
    assert [t for block in packed["input_ids"] for t in block] == stream[
        : len(packed) * 128
    ]  # order kept, nothing lost
    assert stream.count(tok.sep_token_id) == len(docs)  # every document ends with its separator


def test_masking_follows_bert_proportions_and_spares_special_tokens(bpe_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    ids = torch.randint(5, len(tok), (64, 512))
    ids[:, 0], ids[:, 100] = tok.cls_token_id, tok.sep_token_id
    collate = MaskingCollator(tok, 0.15, seed=3)
    batch = collate([{"input_ids": row.tolist()} for row in ids], key=7)
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], ids[chosen])  # labels are the original tokens
    assert not chosen[:, 0].any() and not chosen[:, 100].any()
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.01)
    masked = (batch["input_ids"] == tok.mask_token_id) & chosen
    kept = (batch["input_ids"] == ids) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.02)
    assert kept.sum() / chosen.sum() == pytest.approx(
        0.1 + 0.1 / len(tok), abs=0.02
    )  # 10% kept (+ random hits)
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])
    again = collate([{"input_ids": row.tolist()} for row in ids], key=7)
    other = collate([{"input_ids": row.tolist()} for row in ids], key=8)
    assert torch.equal(again["input_ids"], batch["input_ids"])  # seeded by the batch key alone
    assert not torch.equal(other["labels"], batch["labels"])


def test_whole_word_masking_takes_words_whole(bpe_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    text = " ".join(python_docs_text()[:40])
    ids = tok(text)["input_ids"][:1024]
    batch = MaskingCollator(tok, 0.15, whole_word=True, seed=0)([{"input_ids": ids}], key=0)
    chosen = (batch["labels"][0] != -100).tolist()
    tokens = tok.convert_ids_to_tokens(ids)
    words, current = [], []
    for t, c in zip(tokens, chosen, strict=True):
        if t.startswith("Ġ") or t in tok.all_special_tokens or not current:
            if current:
                words.append(current)
            current = []
        current.append(c)
    words.append(current)
    multi = [w for w in words if len(w) > 1]
    assert multi and all(all(w) or not any(w) for w in multi)
    assert 0.08 < sum(map(any, words)) / len(words) < 0.22


def test_order_is_a_permutation_per_epoch_sharded_across_processes():
    per_rank = [Order(20, batch=2, world=2, rank=r, accumulation=2, seed=1) for r in range(2)]
    assert per_rank[0].steps_per_epoch == 2  # 8 examples per step; the remaining 4 wait for the next shuffle
    seen = [i for step in range(2) for micro in range(2) for o in per_rank for i in o.indices(step, micro)]
    assert len(seen) == len(set(seen)) == 16
    second = [i for micro in range(2) for o in per_rank for i in o.indices(2, micro)]
    assert sorted(second) != sorted(seen[:8]) or second != seen[:8]  # a new shuffle in epoch 2
    keys = {o.key(s, m) for s in range(3) for m in range(2) for o in per_rank}
    assert len(keys) == 12
