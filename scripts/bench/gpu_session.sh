#!/usr/bin/env bash
# The GPU check of the Scale issue as one prepared call (a few minutes on one H100; device time is lent by the
# quarter hour): training-phase MFU of the Qwen2.5-0.5B architecture under FSDP2 + bf16-mixed + compile, at the
# settings of the README's best row (192 prompts, micro-batch 96), falling back to micro-batch 64 if that runs out of
# memory. Writes nvidia-smi's view, the JSON reports and the logs to OUT_DIR.
#
#   bash scripts/bench/gpu_session.sh "$OUT"        # on the device machine ($OUT comes back)
set -uo pipefail
out="${1:-gpu_session_out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.csv"
python -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__)" \
    | tee "$out/versions.txt"
bench() {  # name, then gpu_ppo.py arguments
    local name=$1; shift
    python scripts/bench/gpu_ppo.py --iterations 3 --compile --reference_steps 0 --json "$out/$name.json" "$@" \
        > "$out/$name.log" 2>&1
    local rc=$?
    tail -25 "$out/$name.log"
    return $rc
}
bench mb96 --prompts 192 --micro_batch_size 96 --mini_batch_size 192 \
    || bench mb64 --prompts 128 --micro_batch_size 64 --mini_batch_size 128
