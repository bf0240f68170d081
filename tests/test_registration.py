"""What a Hugging Face user does with a longattn checkpoint works after ``import longattn_cli``, in either order.

Each user line runs in a fresh interpreter that imports nothing of ours but ``import longattn_cli`` (before or
after transformers), over a saved checkpoint of every head. Only after the line has run does the script look at
what came back, and check its numbers against the model's own forward.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.smoke

# The checkpoints: one per head, each with its own mechanism, saved with a BPE tokenizer.
HEADS = {
    "base": ("LongAttnModel", "yoso"),
    "masked-lm": ("LongAttnForMaskedLM", "lsg"),
    "sequence-classification": ("LongAttnForSequenceClassification", "nystrom"),
    "token-classification": ("LongAttnForTokenClassification", "softmax"),
    "replaced-token-detection": ("LongAttnForReplacedTokenDetection", "yoso"),
}

# The user's line, then checks of what it returned (``d`` is a checkpoint folder, ``head`` its head).
AUTO = "from transformers import {auto}\nout = {auto}.from_pretrained(d, output_loading_info=True)"
LINES = {
    "AutoConfig": (
        "from transformers import AutoConfig\nout = AutoConfig.from_pretrained(d)",
        "assert type(out).__name__ == 'LongAttnConfig' and out.attention == MECHANISM[head], out",
    ),
    **{
        auto: (AUTO.format(auto=auto), f"check_auto(out, {made!r})")
        for auto, made in {
            "AutoModel": "LongAttnModel",
            "AutoModelForMaskedLM": "LongAttnForMaskedLM",
            "AutoModelForSequenceClassification": "LongAttnForSequenceClassification",
            "AutoModelForTokenClassification": "LongAttnForTokenClassification",
            "AutoModelForPreTraining": "LongAttnForReplacedTokenDetection",
        }.items()
    },
    "pipeline fill-mask": (
        "from transformers import pipeline\nout = pipeline('fill-mask', model=d)('The <mask> of a function.')",
        "check_fill_mask(out)",
    ),
    "pipeline text-classification": (
        "from transformers import pipeline\nout = pipeline('text-classification', model=d, top_k=None)(TEXT)",
        "check_text_classification(out)",
    ),
    "pipeline token-classification": (
        "from transformers import pipeline\nout = pipeline('token-classification', model=d)(TEXT)",
        "check_token_classification(out)",
    ),
    "pipeline feature-extraction": (
        "from transformers import pipeline\nout = pipeline('feature-extraction', model=d)(TEXT)",
        "check_features(out)",
    ),
    "SentenceTransformer": (
        "from sentence_transformers import SentenceTransformer\nout = SentenceTransformer(d).encode([TEXT])",
        "check_sentence(out)",
    ),
}

ORDERS = {
    "longattn_cli first": "import longattn_cli\n{line}",
    "transformers first": "import transformers\nimport sentence_transformers\nimport longattn_cli\n{line}",
}

# Checks, defined after the user's line ran; they may import anything.
CHECKS = """
import torch
from transformers import AutoTokenizer

from longattn_cli.models.modeling import HEADS

TOK = AutoTokenizer.from_pretrained(d)


def own(cls_head):
    return HEADS[cls_head].from_pretrained(d).eval()


def forward(model, text):
    enc = TOK(text, return_tensors="pt")
    with torch.no_grad():
        return model(**enc), enc


def check_auto(out, made):
    model, info = out
    assert type(model).__name__ == made, type(model).__name__
    if made == CLASS[head]:
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    elif made == "LongAttnModel":
        assert not info["missing_keys"], info


def check_fill_mask(out):
    assert len(out) == 5 and all(r["token_str"] for r in out), out
    if head != "masked-lm":
        return  # a new LM head, drawn at random
    model = own("masked-lm")
    text = "The <mask> of a function."
    result, enc = forward(model, text)
    at = (enc["input_ids"][0] == TOK.mask_token_id).nonzero()[0, 0]
    probs = result.logits[0, at].softmax(-1)
    top = probs.topk(len(out))
    assert [r["token"] for r in out] == top.indices.tolist(), out
    torch.testing.assert_close(torch.tensor([r["score"] for r in out]), top.values, rtol=1e-4, atol=1e-6)


def check_text_classification(out):
    out = out[0] if out and isinstance(out[0], list) else out  # one text: [[...]] on some releases
    assert sorted(r["label"] for r in out) == ["NEG", "NEUTRAL", "POS"], out
    if head != "sequence-classification":
        return  # a new classifier, drawn at random
    result, _ = forward(own("sequence-classification"), TEXT)
    probs = result.logits[0].softmax(-1)
    got = {r["label"]: r["score"] for r in out}
    labels = own("sequence-classification").config.id2label
    want = {labels[i]: p for i, p in enumerate(probs.tolist())}
    assert got.keys() == want.keys(), (got, want)
    for k in got:
        assert abs(got[k] - want[k]) < 1e-5, (got, want)


def check_token_classification(out):
    assert all(r["entity"] in ("NEG", "NEUTRAL", "POS") for r in out), out
    if head != "token-classification":
        return  # a new classifier, drawn at random
    model = own("token-classification")
    result, enc = forward(model, TEXT)
    best = result.logits[0].softmax(-1).max(-1)
    for r in out:
        assert abs(r["score"] - best.values[r["index"]].item()) < 1e-5, r
        assert r["entity"] == model.config.id2label[best.indices[r["index"]].item()], r


def check_features(out):
    result, enc = forward(own("base"), TEXT)
    torch.testing.assert_close(torch.tensor(out[0]), result.last_hidden_state[0], rtol=1e-4, atol=1e-5)


def check_sentence(out):
    result, enc = forward(own("base"), TEXT)
    real = enc["attention_mask"][0].bool()
    mean = result.last_hidden_state[0][real].mean(0)
    torch.testing.assert_close(torch.as_tensor(out[0]), mean, rtol=1e-4, atol=1e-5)
"""


def _script(order: str, line: str, folders: dict[str, str]) -> str:
    call, check = LINES[line]
    return "\n".join(
        [
            f"FOLDERS = {folders!r}",
            f"CLASS = { {h: c for h, (c, _) in HEADS.items()}!r}",
            f"MECHANISM = { {h: m for h, (_, m) in HEADS.items()}!r}",
            "TEXT = 'Return the value of the function for each argument.'",
            "results = {}",
            "for head, d in FOLDERS.items():",
            # The user's lines, at the top level of the loop (the imports are the user's own).
            textwrap.indent(ORDERS[order].format(line=call), "    "),
            "    results[head] = out",
            CHECKS,
            "for head, d in FOLDERS.items():",
            "    out = results[head]",
            f"    {check}",
            "print('ok')",
        ]
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, bpe_dir):
    """One saved checkpoint per head, with the tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from longattn_cli.models.modeling import HEADS as CLASSES
    from longattn_cli.testing import save_perturbed, tiny_config

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    folders = {}
    for i, (head, (_, mechanism)) in enumerate(HEADS.items()):
        labels = {0: "NEG", 1: "NEUTRAL", 2: "POS"}
        config = tiny_config(mechanism, vocab_size=len(tok), max_position_embeddings=130, id2label=labels)
        torch.manual_seed(i)
        d = tmp_path_factory.mktemp(head)
        save_perturbed(CLASSES[head](config).eval(), d, bpe_dir)
        folders[head] = str(d)
    return folders


@pytest.fixture(scope="module")
def runs(checkpoints):
    """Every (order, line) script, two at a time, each in a fresh interpreter; results by key."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    keys = [(order, line) for order in ORDERS for line in LINES]

    def run(key):
        script = _script(*key, checkpoints)
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(keys, pool.map(run, keys), strict=True))


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("line", list(LINES))
def test_user_line_works_after_import_longattn_cli(runs, order, line):
    done = runs[(order, line)]
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
