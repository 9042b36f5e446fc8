#!/usr/bin/env bash
# The GPU check of the ragged-rollouts issue as one prepared device call (~3.5 minutes on one H200). First
# `gpu_packing_check.py` (packed attention through torch's flash varlen kernel against a float64 reference), then
# useful-token training MFU of the Qwen2.5-0.5B architecture (FSDP2 + bf16-mixed + compile) on `gpu_ppo.py --ragged`
# (256 rows: prompts of 16-256 tokens, lognormal responses of 16-1,024 tokens, one mini-batch, one optimizer step per
# model per iteration) in three layouts: token budget + packing (49,152 tokens per pack), token budget (49,152 tokens
# counting padding: the memory of the 96 x 512 uniform row), today's fixed micro-batches (32 rows padded to the
# widest row: 40,960 tokens). Each run is capped so one stuck run cannot eat the others' time. Writes nvidia-smi's
# view, the JSON reports and the logs to OUT_DIR. Run from the repository root; the package need not be installed.
#
#   bash scripts/bench/gpu_ragged.sh "$OUT"        # on the device machine ($OUT comes back)
set -uo pipefail
out="${1:-gpu_ragged_out}"
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.csv"
"$python" -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__)" \
    | tee -a "$out/gpu.csv"
workload=(--ragged --compile --reference_steps 0 --iterations 3 --prompts 256 --mini_batch_size 256
          --prompt_len 256 --new_tokens 1024 --micro_batch_size 32)
bench() {  # name, seconds allowed, layout flags...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$python" scripts/bench/gpu_ppo.py "${workload[@]}" "$@" --json "$out/$name.json" \
        > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name (exit $rc)"
    tail -8 "$out/$name.log"
    return $rc
}
status=0
timeout 60 "$python" scripts/bench/gpu_packing_check.py > "$out/packing_check.log" 2>&1 || status=1
grep -v "Loading\|Writing" "$out/packing_check.log" | tail -20
bench packed49152 140 --max_tokens_per_micro_batch 49152 --pack_sequences || status=1
bench budget49152 110 --max_tokens_per_micro_batch 49152 || status=1
bench fixed32 110 || status=1
exit $status
