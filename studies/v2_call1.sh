#!/usr/bin/env bash
# Reference study v2, device call 1: corpus + tokenizer, then the LR rule (scaling tune-lr).
# Run from the repository root on the GPU machine; $OUT receives what comes back.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
S() { python3 -m scaling "$@"; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, tokenizers; print('torch', torch.__version__, 'tokenizers', tokenizers.__version__)"
t0=$(date +%s)
if [ ! -f data/pysrc8k/meta.json ]; then
  S prepare pysrc --site-packages --tokenizer bpe:8192 --val-bytes 32M --out data/pysrc8k 2>&1 | tail -12
fi
echo "prepare: $(( $(date +%s) - t0 )) s"
cp data/pysrc8k/meta.json data/pysrc8k/tokenizer.json "$OUT/"
S tune-lr --data data/pysrc8k --ladder 3e6,7e6,15e6 --lrs 1e-3:1.6e-2:5 --tokens-per-param 10 \
  --gpu h200 --per-gpu 5 --out rules/lr_pysrc8k.yaml --dry-run 2>&1 | tail -30
t1=$(date +%s)
timeout "${TUNE_LIMIT:-420}" python3 -m scaling tune-lr --data data/pysrc8k --ladder 3e6,7e6,15e6 \
  --lrs 1e-3:1.6e-2:5 --tokens-per-param 10 --gpu h200 --per-gpu 5 --out rules/lr_pysrc8k.yaml --no-progress 2>&1 | tail -40
echo "tune-lr: $(( $(date +%s) - t1 )) s, rc $?"
python3 -m scaling status results/tune_lr_pysrc8k 2>&1 | tail -25
cp rules/lr_pysrc8k.yaml "$OUT/" 2>/dev/null
tar czf "$OUT/tune_results.tgz" --exclude='checkpoint*' --exclude='*.pt' results/tune_lr_pysrc8k 2>/dev/null
ls -la "$OUT"
