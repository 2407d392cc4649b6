#!/usr/bin/env bash
# Reference study v2 on the GPU machine: the corpus and its tokenizer (once per machine), then the
# LR rule. Run from the repository root; $OUT receives what comes back.
#   LADDER=3e6,7e6,15e6 bash studies/v2_tune.sh        (2026-12-04: these 3 sizes, 2 device calls)
# Run outputs go under .study/ (git-ignored), so they stay on a warm machine between calls: the
# device tool replaces the tracked and untracked-but-not-ignored files of the tree at each call.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ ! -f data/pysrc8k/meta.json ]; then
  t0=$(date +%s)
  # bpe:8192 trains deterministically on the train split: the same tokenizer as studies/v2_tokenizer.json.
  python3 -m scaling prepare pysrc --site-packages --tokenizer bpe:8192 --val-bytes 32M --out data/pysrc8k \
    2>&1 | grep -v "tokenize (" | tail -8
  echo "prepare: $(( $(date +%s) - t0 )) s"
fi
t1=$(date +%s)
timeout "${TUNE_LIMIT:-540}" python3 -m scaling tune-lr --data data/pysrc8k --ladder "${LADDER:-3e6,7e6,15e6}" \
  --lrs 1e-3:1.6e-2:5 --tokens-per-param 10 --gpu h200 --per-gpu 5 --results .study \
  --out .study/lr_pysrc8k.yaml --no-progress 2>&1 | tail -30
echo "tune-lr: $(( $(date +%s) - t1 )) s"
python3 -m scaling status .study/tune_lr_pysrc8k 2>&1 | tail -25
cp .study/lr_pysrc8k.yaml "$OUT/" 2>/dev/null
tar czf "$OUT/tune_results.tgz" --exclude='checkpoint*' --exclude='*.pt' --exclude='*.sha256' -C .study tune_lr_pysrc8k
