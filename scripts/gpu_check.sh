#!/usr/bin/env bash
# bash scripts/gpu_check.sh [OUT]   (GPU_CHECK_BUDGET=480 seconds after the install; GPU_CHECK_CPU=1 forces the CPU version)
#
# One prepared device run from a clean checkout: install (where longattn is not importable yet), then, each
# step under its own time limit so that nothing hangs and everything lands under OUT/:
#   1. the gpu-marked tests                                     OUT/tests.log
#   2. a bf16 benchmark, model scope, base size, 4,096…32,768 tokens, forward and training, every mechanism
#      with transformers' references                           OUT/bench.{json,csv,log}
#   3. bf16 pretraining stopped by SIGTERM, resumed with --resume latest, and compared bit for bit with the
#      same run uninterrupted                                   OUT/resume.json, OUT/pretrain-*/
#   4. with the time left, paper-scale ListOps for each mechanism (longattn lra run; stopped cleanly at the
#      limit, finished runs kept)                               OUT/lra-paper/, OUT/lra.log
# OUT/summary.txt lists each step's exit code and seconds. Without CUDA (or with GPU_CHECK_CPU=1) every step
# runs as a few-second version (tiny shapes, float32, a few steps) so the script itself can be checked on CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "[$(date +%T)] $*" | tee -a "$SUMMARY"; }

if ! $PY -c "import longattn_cmd.cli" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null && ! $PY -c "import torch" 2>/dev/null; then
        spec=torch  # the registry's default build, CUDA on Linux
    else
        spec=torch==2.13.0
    fi
    note "install (torch: ${spec}, kept if present)"
    timeout 900 make install PYTHON="$PY" TORCH_SPEC="$spec" > "$OUT/install.log" 2>&1 || {
        note "install failed: see $OUT/install.log"
        exit 1
    }
fi

BUDGET=${GPU_CHECK_BUDGET:-480}
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
# step NAME LIMIT CMD...: run CMD under LIMIT seconds (SIGINT, then SIGKILL 20 s later), log in OUT/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    if [ "$limit" -le 5 ]; then
        note "$name: skipped, no time left"
        return 0
    fi
    timeout -s INT -k 20 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc in $(($(date +%s) - t0)) s (limit $limit s)"
    return $rc
}
cap() { local a=$1 b; b=$(left); echo $((a < b ? a : b)); }

if [ "${GPU_CHECK_CPU:-0}" != 1 ] && $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    GPU=1
    $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$SUMMARY"
    # Paper-scale ListOps takes a few minutes to generate on one core: start it now, beside steps 1-3.
    if [ ! -f data/lra/listops/train.jsonl ]; then
        rm -rf data/lra/listops
        (timeout 400 $PY -m longattn_cmd data listops --out data/lra/listops > "$OUT/listops-data.log" 2>&1 &&
            touch "$OUT/listops-data.done" &)
    else
        touch "$OUT/listops-data.done"
    fi
    BENCH=(--scope model --model-size base --lengths 4096,8192,16384,32768 --mode both --reference
        --dtype bfloat16 --repeats 3 --time-budget 20)
    PRE=(training.mixed_precision=bf16 training.max_steps=200 training.save_every=20 training.log_every=10)
    LRA=(--scale paper)
    LRA_DATA=data/lra/listops
else
    GPU=0
    note "no CUDA: the CPU version (few-second steps)"
    BENCH=(--scope model --model-size tiny --lengths 256,512 --mode both --reference --dtype float32
        --repeats 3 --time-budget 10)
    PRE=(data.max_length=256 data.max_examples=40 model.vocab_size=512 training.max_steps=12 training.save_every=2
        training.log_every=1 training.batch_size=2 "data.cache_dir=$OUT/cache")
    LRA_DATA=$OUT/listops-tiny
    $PY -m longattn_cmd data listops --out "$LRA_DATA" --train 32 --validation 8 --test 8 --min-length 20 \
        --max-length 200 > "$OUT/listops-data.log" 2>&1
    LRA=(--scale paper data.max_length=256 training.max_steps=2 training.warmup_steps=1 training.batch_size=4
        training.eval_every=2 training.save_every=1 "data.cache_dir=$OUT/cache")
fi

# 1. gpu-marked tests (they skip themselves without CUDA)
step tests "$(cap 120)" $PY -m pytest -m gpu -q -p no:cacheprovider

# 2. the benchmark
step bench "$(cap 200)" $PY -m longattn_cmd benchmark "${BENCH[@]}" --json "$OUT/bench.json" --csv "$OUT/bench.csv"

# 3. SIGTERM and exact resume: the same run uninterrupted and stopped at its first checkpoint, then resumed
step resume "$(cap 150)" bash scripts/resume_check.sh "$OUT" "${PRE[@]}"

# 4. paper-scale ListOps (CPU version: 2 steps on tiny data), every mechanism, until the time runs out
if [ "$GPU" = 1 ]; then
    for _ in $(seq 1 300); do  # the data started at the beginning
        [ -f "$OUT/listops-data.done" ] && break
        [ "$(left)" -le 30 ] && break
        sleep 1
    done
fi
step lra "$(($(left) - 10))" $PY -m longattn_cmd lra run listops "${LRA[@]}" --data "$LRA_DATA" -o "$OUT/lra-paper"
done_runs=$(compgen -G "$OUT/lra-paper/*/summary.json" | xargs -r -n1 dirname)
if [ -n "$done_runs" ]; then
    # shellcheck disable=SC2086
    $PY -m longattn_cmd lra report $done_runs --save "$OUT/lra-report" >> "$OUT/lra.log" 2>&1
fi
note "done in $(($(date +%s) - START)) s; finished ListOps runs: $(echo "$done_runs" | grep -c . || true)"
