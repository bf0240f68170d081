"""The commands the docs mark runnable (a fenced block after ``<!-- runnable -->``) run as written, in order,
in a fresh folder holding the recipes, each with tiny-scale arguments appended (later values win)."""

import re
import shlex
from pathlib import Path

import pytest
from helpers import TINY_PRETRAIN, run_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"<!-- runnable -->\n```(?:bash|sh)\n(.*?)```", re.S)
TRAIN = [
    "data.max_length=128", "training.max_steps=2", "training.warmup_steps=0", "training.batch_size=4",
    "training.eval_every=2", "training.save_every=2",
]  # fmt: skip
# What each command gets appended at test scale.
TINY = {
    "data": [
        "--train",
        "40",
        "--validation",
        "8",
        "--test",
        "8",
        "--min-length",
        "20",
        "--max-length",
        "120",
    ],
    "finetune": TRAIN,
    "compare": TRAIN,
    "pretrain": [*TINY_PRETRAIN, "training.max_steps=2"],
}


def runnable_blocks() -> list[tuple[str, list[str]]]:
    """(page, its runnable commands) for every runnable block; continuation lines joined, comments dropped."""
    found = []
    for page in PAGES:
        for block in BLOCK.findall(page.read_text()):
            joined = block.replace("\\\n", " ")
            commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
            found.append((str(page.relative_to(ROOT)), [c for c in commands if c]))
    return found


def test_the_readme_has_a_runnable_walkthrough():
    pages = [page for page, _ in runnable_blocks()]
    assert "README.md" in pages


@pytest.mark.parametrize("page, commands", runnable_blocks(), ids=lambda x: x if isinstance(x, str) else "")
def test_runnable_commands_run_as_written(page, commands, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGATTN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    for argv in commands:
        assert argv[0] == "longattn", f"{page}: a runnable block holds longattn commands only: {argv}"
        code, _, err = run_cli(argv[1:] + TINY.get(argv[1], []), capsys)
        assert code == 0, f"{page}: {shlex.join(argv)}\n{err}"
