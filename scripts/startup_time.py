"""How long `longattn` takes to print something: --help, each command's --help, and one-line errors.

    python scripts/startup_time.py [--repeats 5]

Each command runs as a fresh process ``--repeats`` times; the table gives the median wall time next to
``python -c pass`` (the interpreter's own start-up) on the same machine, in the same run. This is a
measurement, not a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "longattn --help": ["--help"],
    "pretrain --help": ["pretrain", "--help"],
    "finetune --help": ["finetune", "--help"],
    "benchmark --help": ["benchmark", "--help"],
    "convert --help": ["convert", "--help"],
    "fill-mask --help": ["fill-mask", "--help"],
    "lra report --help": ["lra", "report", "--help"],
    "recipe error (unknown key)": ["pretrain", "training.bogus=1"],
    "recipe error (attention setting)": [
        "pretrain",
        "model.attention=nystrom",
        "model.attention_settings.num_landmarks=0",
    ],
    "argument error (fill-mask -k 0)": ["fill-mask", "x <mask>", "-k", "0"],
    "argument error (benchmark --attention)": ["benchmark", "--attention", "bogus"],
    "finetune --print-recipe": ["finetune", "--print-recipe"],
}


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "longattn_cmd"]
    print(f"{'command':<42} {'median (s)':>10} {'min':>6} {'max':>6}")
    for label, argv in COMMANDS.items():
        full = argv if argv[0] == sys.executable else cli + argv
        times = [seconds(full) for _ in range(args.repeats)]
        print(f"{label:<42} {statistics.median(times):>10.2f} {min(times):>6.2f} {max(times):>6.2f}")


if __name__ == "__main__":
    main()
