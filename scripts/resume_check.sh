#!/usr/bin/env bash
# bash scripts/resume_check.sh OUT [pretrain overrides...]
# `longattn pretrain` twice with the same recipe: A uninterrupted; B sent SIGTERM as soon as its first
# checkpoint exists, then continued with --resume latest. Writes OUT/resume.json; exit 0 when B was stopped by
# the signal (exit 143) and its final weights equal A's bit for bit.
set -uo pipefail
OUT=$1
shift
PY=${PYTHON:-python3}
$PY -m longattn_cmd pretrain "$@" "training.output_dir=$OUT/pretrain-a" || exit $?
$PY -m longattn_cmd pretrain "$@" "training.output_dir=$OUT/pretrain-b" &
pid=$!
sent=no
for _ in $(seq 1 600); do
    if compgen -G "$OUT/pretrain-b/checkpoints/step-*" > /dev/null; then
        kill -TERM "$pid" 2> /dev/null && sent=yes
        break
    fi
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.2
done
wait "$pid"
rc=$?
echo "first leg of B: exit $rc (143: stopped by SIGTERM after saving); signal sent: $sent"
$PY -m longattn_cmd pretrain "$@" "training.output_dir=$OUT/pretrain-b" --resume latest || exit $?
$PY - "$OUT" "$rc" << 'PYEOF'
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

out, rc = Path(sys.argv[1]), int(sys.argv[2])
a, b = (load_file(out / f"pretrain-{x}" / "model.safetensors") for x in "ab")
same = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
result = {"interrupted_by_sigterm": rc == 143, "first_leg_exit": rc, "bit_exact": same, "tensors": len(a)}
(out / "resume.json").write_text(json.dumps(result, indent=2) + "\n")
print(result)
sys.exit(0 if same and rc == 143 else 1)
PYEOF
