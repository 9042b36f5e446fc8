#!/usr/bin/env bash
# The GPU checks as one prepared device call each (device time is lent by the quarter hour). Writes nvidia-smi's view,
# the JSON reports (and kernel tables) and the logs to OUT_DIR. Run from the repository root; the package need not
# be installed.
#
#   bash scripts/bench/gpu_session.sh "$OUT"          # uniform rows (~4 min on one H100)
#   bash scripts/bench/gpu_session.sh "$OUT" ragged   # ragged rows (~3.5 min on one H200)
#
# uniform: training-phase MFU of the Qwen2.5-0.5B architecture under FSDP2 + bf16-mixed + compile at
# docs/results.md's two micro-batch-96 workloads: 384 prompts with one optimizer step per model per iteration (the
# 40% row), then 192 prompts with two. Each falls back to micro-batch 64 if it runs out of memory, and runs one extra
# profiled iteration (kernel table next to its JSON).
#
# ragged: first `gpu_packing_check.py` (packed attention through torch's flash varlen kernel against a float64
# reference), then useful-token training MFU of the same model on `gpu_ppo.py --ragged` (256 rows: prompts of 16-256
# tokens, lognormal responses of 16-1,024 tokens, one mini-batch, one optimizer step per model per iteration) in three
# layouts: token budget + packing (49,152 tokens per pack), token budget (49,152 tokens counting padding: the memory
# of the 96 x 512 uniform row), fixed micro-batches (32 rows padded to the widest row: 40,960 tokens). Each run is
# capped so one stuck run cannot eat the others' time.
set -uo pipefail
out="${1:-gpu_session_out}"
mode="${2:-uniform}"
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.csv"
"$python" -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__)" \
    | tee -a "$out/gpu.csv"
bench() {  # name, seconds allowed, gpu_ppo.py flags...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$python" scripts/bench/gpu_ppo.py "$@" --json "$out/$name.json" > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name (exit $rc)"
    tail -9 "$out/$name.log"
    return $rc
}
status=0
if [ "$mode" = uniform ]; then
    uniform() {  # name, prompts, micro-batch, mini-batch
        bench "$1" 600 --iterations 3 --compile --reference_steps 0 --profile \
            --prompts "$2" --micro_batch_size "$3" --mini_batch_size "$4"
    }
    uniform p384_mb96 384 96 384 || uniform p256_mb64 256 64 256 || status=1
    uniform p192_mb96 192 96 192 || uniform p128_mb64 128 64 128 || status=1
elif [ "$mode" = ragged ]; then
    ragged=(--ragged --compile --reference_steps 0 --iterations 3 --prompts 256 --mini_batch_size 256
            --prompt_len 256 --new_tokens 1024 --micro_batch_size 32)
    timeout 60 "$python" scripts/bench/gpu_packing_check.py > "$out/packing_check.log" 2>&1 || status=1
    grep -v "Loading\|Writing" "$out/packing_check.log" | tail -20
    bench packed49152 140 "${ragged[@]}" --max_tokens_per_micro_batch 49152 --pack_sequences || status=1
    bench budget49152 110 "${ragged[@]}" --max_tokens_per_micro_batch 49152 || status=1
    bench fixed32 110 "${ragged[@]}" || status=1
else
    echo "gpu_session.sh: unknown mode '$mode' (uniform or ragged)" >&2
    status=2
fi
exit $status
