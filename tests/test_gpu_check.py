"""scripts/gpu_check.sh, the one prepared device run: its CPU version runs every step in seconds."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_version_runs_every_step_and_keeps_everything_under_one_folder(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "GPU_CHECK_CPU": "1", "GPU_CHECK_BUDGET": "500"}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=700,
    )
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    for name in ("tests", "bench", "resume", "lra"):
        assert f"{name}: exit 0" in summary, summary
    resume = json.loads((out / "resume.json").read_text())
    assert resume == {**resume, "interrupted_by_sigterm": True, "bit_exact": True}, resume
    points = json.loads((out / "bench.json").read_text())["points"]
    modes = {p["mode"] for p in points}
    assert modes == {"forward", "train"} and any(p["label"].startswith("hf-") for p in points)
    runs = sorted(p.parent.name for p in (out / "lra-paper").glob("*/summary.json"))
    assert runs == [f"listops-{m}" for m in ("lsg", "nystrom", "softmax", "yoso")]
    assert "listops" in (out / "lra-report.txt").read_text()
