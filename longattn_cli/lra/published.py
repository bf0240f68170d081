"""Test accuracies (%) published for the LRA tasks longattn runs, with where each figure comes from.

Only figures checked against the papers are recorded; ``None`` marks a cell not recorded here.
"""

NYSTROMFORMER_PAPER = "Nyströmformer (Xiong et al., AAAI 2021, arXiv 2102.03902), LRA table"

# mechanism → task → accuracy (%), and the source of each row.
PUBLISHED: dict[str, dict[str, float | None]] = {
    "softmax": {"listops": 37.10, "text": 65.02},
    "nystrom": {"listops": 37.15, "text": 65.52},
}
SOURCES: dict[str, str] = {
    "softmax": NYSTROMFORMER_PAPER + " ('Standard'); the YOSO paper reports the same softmax baseline",
    "nystrom": NYSTROMFORMER_PAPER,
}


def published(mechanism: str, task: str) -> float | None:
    return PUBLISHED.get(mechanism, {}).get(task)
