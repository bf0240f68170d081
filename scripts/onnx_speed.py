"""Forward time of a model exported by ``longattn export`` in onnxruntime against the same model in torch, per
mechanism, at 512 and 4,096 tokens (batch 1), one run: each side warmed up once, then the median of
``--repeats`` forwards; the largest |Δ| between the two outputs is recorded beside the times. Measured, not
tested::

    python scripts/onnx_speed.py --json results/onnx/speed.json        # 4 layers x 256 wide, 2 threads
    python scripts/onnx_speed.py --size base --mechanisms lsg,softmax  # 12 layers x 768
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
# The settings each mechanism is exported with: YOSO in its expectation mode (its LSH mode is refused).
MECHANISMS = {
    "softmax": ("softmax", {}),
    "yoso-e": ("yoso", {"use_expectation": True}),
    "nystrom": ("nystrom", {}),
    "lsg": ("lsg", {}),
}


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(name: str, size: str, lengths: list[int], repeats: int, threads: int, tmp: Path) -> dict:
    import onnxruntime as ort
    import torch

    from longattn_cli.models import onnx
    from longattn_cli.models.modeling import LongAttnForSequenceClassification
    from longattn_cli.testing import tiny_config, train_bpe_tokenizer

    mechanism, settings = MECHANISMS[name]
    tok = tmp / "tok"
    if not tok.exists():
        train_bpe_tokenizer(tok, vocab_size=2000, model_max_length=4096)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok)
    config = tiny_config(
        mechanism, block=128, vocab_size=len(tokenizer), max_position_embeddings=4098, **SIZES[size]
    )
    if settings:
        config.set_attention(**settings)
    torch.manual_seed(0)
    model_dir = tmp / name
    LongAttnForSequenceClassification(config).eval().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    report = onnx.export(str(model_dir), tmp / f"{name}-onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(tmp / f"{name}-onnx" / "model.onnx"), options, ["CPUExecutionProvider"]
    )
    model = LongAttnForSequenceClassification.from_pretrained(model_dir).eval()
    rows = []
    for n in lengths:
        ids = torch.randint(5, len(tokenizer), (1, n), generator=torch.Generator().manual_seed(n))
        mask = torch.ones_like(ids)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).logits
            torch_s = _median_seconds(lambda i=ids, m=mask: model(input_ids=i, attention_mask=m), repeats)
        got = torch.from_numpy(session.run(None, feed)[0])
        ort_s = _median_seconds(lambda f=feed: session.run(None, f), repeats)
        rows.append(
            {
                "mechanism": name,
                "length": n,
                "torch_s": round(torch_s, 4),
                "onnxruntime_s": round(ort_s, 4),
                "onnxruntime_over_torch": round(ort_s / torch_s, 3),
                "max_abs_diff": float((got - want).abs().max()),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    return {"export_seconds": report["export_seconds"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS))
    parser.add_argument("--lengths", default="512,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="Also write the result here.")
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    from longattn_cli.bench.machine import machine, provenance

    lengths = [int(x) for x in args.lengths.split(",")]
    result = {
        **provenance(),
        "machine": {**machine("cpu", args.threads), "onnxruntime": onnxruntime.__version__},
        "size": {"name": args.size, **SIZES[args.size]},
        "batch": 1,
        "repeats": args.repeats,
        "mechanisms": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.mechanisms.split(","):
            result["mechanisms"][name] = measure(
                name, args.size, lengths, args.repeats, args.threads, Path(tmp)
            )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
