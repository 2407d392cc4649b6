#!/usr/bin/env bash
# Checks on a GPU of paths the CPU test suite covers only on CPU: fp16 + GradScaler, torchrun with
# NCCL (one process), and a wsd-branch sweep launched with the local executor and torch.compile.
# Run from anywhere on a GPU machine: bash benchmarks/gpu_paths.sh (about 5 minutes on an H100).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
D=/tmp/d
python3 -m scaling prepare pysrc --tokenizer bytes --out $D --workers 8 | tail -2
common="data.path=$D model.n_layer=4 model.d_model=256 model.n_head=4 model.d_ff=1024 model.context=256 model.vocab_size=257 steps=300 train.batch_size=64 train.micro_batch_size=32 train.lr_peak=2e-3 train.warmup_steps=30 train.eval_interval=150 train.log_interval=50"
echo "== 1. fp16 + GradScaler"; python3 -m scaling train --out /tmp/r_fp16 name=fp16 train.precision=fp16 $common 2>&1 | grep -v Warn | tail -5
echo "== 1b. bf16, same run"; python3 -m scaling train --out /tmp/r_bf16 name=bf16 $common 2>&1 | grep -v Warn | tail -3
echo "== 2. torchrun, 1 process, NCCL"; torchrun --standalone --nproc_per_node 1 -m scaling train --out /tmp/r_ddp name=ddp $common 2>&1 | grep -v Warn | tail -4
python3 - <<'PY'
import json
for r in ("fp16", "bf16", "ddp"):
    j = json.load(open(f"/tmp/r_{r}/run.json"))
    print(r, j["status"], "val_loss", j["result"]["val_loss"], "env", {k: j["environment"].get(k) for k in ("precision", "world_size", "gpu_name")})
PY
echo "== 3. wsd-branch sweep on the GPU"
python3 -m scaling plan --budgets 1e13,4e13 --sizes 5 --spread 3 --context 256 --data $D --aspect 32 --head-dim 32 --min-steps 50 --branching --out /tmp/b.yaml | tail -4
python3 -m scaling launch /tmp/b.yaml train.eval_interval=1000 train.eval_tokens=65536 --results /tmp/res --no-progress 2>&1 | grep -v Warn | tail -3
python3 -m scaling status /tmp/res/sweep | head -40
python3 -c "
import pandas as pd; t = pd.read_parquet('/tmp/res/sweep/runs.parquet')
print(t[['name','status','n_params_total','tokens','val_loss','flops_6nd','flops_cost_6nd','branch_tokens']].to_string())
print('FLOPs ratio branched/from-scratch:', t.flops_cost_6nd.sum() / t.flops_6nd.sum())"
