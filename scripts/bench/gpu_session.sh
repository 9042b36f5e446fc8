#!/usr/bin/env bash
# The GPU check of the Scale issue as one prepared call (~4 minutes on one H100; device time is lent by the quarter
# hour): training-phase MFU of the Qwen2.5-0.5B architecture under FSDP2 + bf16-mixed + compile at docs/results.md's two
# micro-batch-96 workloads: 384 prompts with one optimizer step per model per iteration (the 40% row), then 192
# prompts with two. Each falls back to micro-batch 64 if it runs out of memory, and runs one extra profiled iteration
# (kernel table next to its JSON). Writes nvidia-smi's view, the JSON reports and the logs to OUT_DIR. Run from the
# repository root; the package need not be installed.
#
#   bash scripts/bench/gpu_session.sh "$OUT"        # on the device machine ($OUT comes back)
set -uo pipefail
out="${1:-gpu_session_out}"
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.csv"
"$python" -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__)" \
    | tee -a "$out/gpu.csv"
bench() {  # name, prompts, micro-batch, mini-batch
    "$python" scripts/bench/gpu_ppo.py --iterations 3 --compile --reference_steps 0 --profile --json "$out/$1.json" \
        --prompts "$2" --micro_batch_size "$3" --mini_batch_size "$4" > "$out/$1.log" 2>&1
    local rc=$?
    tail -9 "$out/$1.log"
    return $rc
}
status=0
bench p384_mb96 384 96 384 || bench p256_mb64 256 64 256 || status=1
bench p192_mb96 192 96 192 || bench p128_mb64 128 64 128 || status=1
exit $status
