"""Documents per second of ``longattn predict`` against transformers' ``pipeline("text-classification")`` on
the same fine-tuned-shape model and the same documents (lengths spread from 100 to 4,096 tokens), one run,
each side timed end to end (load, read, predict, write) after one untimed warm-up. Measured, not tested::

    python scripts/predict_throughput.py                          # LSG, 4 layers × 256 wide, 96 documents
    python scripts/predict_throughput.py --attention softmax --documents 32 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def documents(tokenizer, count: int, low: int, high: int, seed: int) -> list[str]:
    """``count`` texts of CPython's docs whose token counts spread evenly from ``low`` to ``high``."""
    from longattn_cli.testing import python_docs_text

    ids = tokenizer(" ".join(python_docs_text()), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    lengths = [round(low + (high - low) * i / max(count - 1, 1)) - 2 for i in range(count)]
    rng.shuffle(lengths)  # the order a user's file has: not sorted
    out = []
    for n in lengths:
        start = rng.randrange(0, len(ids) - n)
        out.append(tokenizer.decode(ids[start : start + n]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attention", default="lsg")
    parser.add_argument("--documents", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="Also write the result here.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import longattn_cli  # noqa: F401  (registers the family for the pipeline)
    from longattn_cli.bench.machine import machine, provenance
    from longattn_cli.inference.predict import predict_file
    from longattn_cli.models.modeling import LongAttnForSequenceClassification
    from longattn_cli.testing import tiny_config, train_bpe_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = train_bpe_tokenizer(tmp / "tok", vocab_size=2000, model_max_length=4096)
        config = tiny_config(
            args.attention, block=128, vocab_size=len(tok), max_position_embeddings=4098, hidden_size=256,
            num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, id2label={0: "no", 1: "yes"},
        )  # fmt: skip
        torch.manual_seed(0)
        LongAttnForSequenceClassification(config).eval().save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        texts = documents(tok, args.documents, 100, 4096, seed=0)
        data = tmp / "docs.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        over = {"data.max_length": 4096}

        def ours(out: str) -> None:
            predict_file(str(tmp / "model"), str(data), str(tmp / out), args.batch_size, over, overwrite=True)

        def theirs() -> None:
            from transformers import pipeline

            clf = pipeline("text-classification", model=str(tmp / "model"), device="cpu", top_k=None)
            rows = clf(texts, batch_size=args.batch_size, truncation=True, max_length=4096)
            (tmp / "theirs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

        timings = {}
        for name, run in (("longattn predict", lambda: ours("p.jsonl")), ("pipeline", theirs)):
            run()  # warm-up
            began = time.perf_counter()
            run()
            timings[name] = time.perf_counter() - began
        lines = [json.loads(x) for x in (tmp / "p.jsonl").read_text().splitlines()]
        agree = sum(
            a["label"] == max(b, key=lambda r: r["score"])["label"]
            for a, b in zip(
                lines, (json.loads(x) for x in (tmp / "theirs.jsonl").read_text().splitlines()), strict=True
            )
        )
    rate = {k: args.documents / v for k, v in timings.items()}
    result = {
        **provenance(), "machine": machine("cpu", args.threads)["cpu"],
        "threads": args.threads, "attention": args.attention, "documents": args.documents,
        "batch_size": args.batch_size, "seconds": timings, "documents_per_s": rate,
        "speedup": rate["longattn predict"] / rate["pipeline"], "same_labels": f"{agree}/{args.documents}",
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
