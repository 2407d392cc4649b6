#!/usr/bin/env bash
# Reference study v2, device call 3: a fourth LR-rule size (30M) (resumes call 1's runs on a warm machine;
# on a fresh one it prepares the corpus again with the tokenizer call 1 trained, carried in .carry/).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ ! -f data/pysrc8k/meta.json ]; then
  python3 -m scaling prepare pysrc --site-packages --tokenizer hf:.carry/tokenizer.json --val-bytes 32M \
    --out data/pysrc8k 2>&1 | grep -v "tokenize (" | tail -8
fi
t1=$(date +%s)
timeout "${TUNE_LIMIT:-540}" python3 -m scaling tune-lr --data data/pysrc8k --ladder 3e6,7e6,15e6,3e7 \
  --lrs 1e-3:1.6e-2:5 --tokens-per-param 10 --gpu h200 --per-gpu 5 --out rules/lr_pysrc8k.yaml --no-progress 2>&1 | tail -30
echo "tune-lr: $(( $(date +%s) - t1 )) s"
python3 -m scaling status results/tune_lr_pysrc8k 2>&1 | tail -20
cp rules/lr_pysrc8k.yaml "$OUT/" 2>/dev/null
tar czf "$OUT/tune_results.tgz" --exclude='checkpoint*' --exclude='*.pt' --exclude='*.sha256' results/tune_lr_pysrc8k
