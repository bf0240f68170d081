#!/usr/bin/env bash
# Re-measure the README's Performance tables (and the throughput table) on this machine, alone on it:
#   bash scripts/performance.sh [OUT]        # OUT defaults to results/performance/DATE-COMMIT, a new folder
# (python -m longattn_cmd: the checkout it runs in, whatever is installed.) Each step writes JSON, CSV and a plot
# (or a text file) into OUT; results/index.json names the files the docs show, `make docs` renders them.
set -euo pipefail
out=${1:-results/performance/$(date +%Y-%m-%d)-$(git rev-parse --short HEAD)}
mkdir -p "$out"
common=(--repeats 3 --min-time 0 --threads 2)
efficient=yoso-lsh,yoso-lsh-ebwd,nystrom,lsg-norm,lsg-bos_pooling,lsg-pooling,lsg-stride,lsg-block_stride
python -m longattn_cmd benchmark --scope layer --mode both --lengths 512,4096,16384 --attention "$efficient,softmax-sdpa" \
    --reference --time-budget 180 "${common[@]}" \
    --json "$out/layer.json" --csv "$out/layer.csv" --plot "$out/layer.png" | tee "$out/layer.txt"
# Training at 16,384 tokens without any dropout, so every SDPA (softmax's and LSG's blocks) is the fused one,
# with the time budget the fused softmax needs there (about 35 s a step).
python -m longattn_cmd benchmark --scope layer --mode train --lengths 16384 --dropout 0 \
    --attention "${efficient/yoso-lsh-ebwd,/},softmax-sdpa" --reference --time-budget 400 "${common[@]}" \
    --json "$out/layer-16k-train.json" --csv "$out/layer-16k-train.csv" | tee "$out/layer-16k-train.txt"
# LSG's training at 16,384 tokens after its chunked backward, with the fused softmax as the baseline, without
# and with dropout (the two tables under "LSG in training at 16,384 tokens").
lsg=lsg-norm,lsg-bos_pooling,lsg-pooling,lsg-stride,lsg-block_stride
python -m longattn_cmd benchmark --scope layer --mode train --lengths 16384 --dropout 0 --attention "$lsg,softmax-sdpa" \
    --time-budget 400 "${common[@]}" --json "$out/layer-16k-train-lsg.json" --csv "$out/layer-16k-train-lsg.csv" \
    | tee "$out/layer-16k-train-lsg.txt"
python -m longattn_cmd benchmark --scope layer --mode train --lengths 16384 --attention "$lsg,softmax-sdpa" \
    --time-budget 400 "${common[@]}" --json "$out/layer-16k-train-dropout-lsg.json" \
    --csv "$out/layer-16k-train-dropout-lsg.csv" | tee "$out/layer-16k-train-dropout-lsg.txt"
python -m longattn_cmd benchmark --scope model --model-size base --mode forward --lengths 1024,4096 \
    --attention yoso-lsh,nystrom,lsg-norm,softmax-sdpa --reference --time-budget 120 "${common[@]}" \
    --json "$out/model.json" --csv "$out/model.csv" --plot "$out/model.png" | tee "$out/model.txt"
python scripts/train_throughput.py --size base --steps 4 | tee "$out/throughput.txt"
# Memory levers: a base-size encoder's training step per mechanism, plain, with gradient checkpointing and in
# bf16 (no dropout: every softmax is the fused SDPA), at 4,096 tokens (12 layers) and 16,384 (2 layers).
for lever in plain checkpointed bf16; do
    case $lever in plain) x=();; checkpointed) x=(--gradient-checkpointing);; bf16) x=(--dtype bfloat16);; esac
    for at in "4k 4096 12" "16k 16384 2"; do
        read -r tag n layers <<< "$at"
        python -m longattn_cmd benchmark --scope model --model-size base --layers "$layers" --mode train \
            --lengths "$n" --attention yoso-lsh,nystrom,lsg-norm,softmax-sdpa --dropout 0 --time-budget 400 \
            "${common[@]}" "${x[@]}" --json "$out/levers-$tag-$lever.json" --csv "$out/levers-$tag-$lever.csv" \
            | tee "$out/levers-$tag-$lever.txt"
    done
done
python scripts/memory_levers.py "$out" | tee "$out/levers.md"
