#!/usr/bin/env bash
# Score programs against the APPS tests in the sandbox and write a report (pass rate and strict accuracy per
# difficulty, score bands, verdict counts).
#
#   bash scripts/evaluate.sh --solutions generations.jsonl            # lines {"problem_id": ..., "solution": ...}
#   bash scripts/evaluate.sh                                          # the dataset's own reference solutions
#   bash scripts/evaluate.sh --data data/apps/test.parquet --mode apps --max_problems 100
#
# generations.jsonl holds programs from any generator, one line each (`solution` is the program, extract it from the
# response with lit_codegen.data.prompts.extract_program). Paths are relative to the current folder: run from the
# repository root, like the other scripts.
# Defaults: the preprocessed test split (scripts/preprocess_apps.sh), strict comparison, report in
# outputs/eval/report.json. Arguments after the defaults override them
# (`python -m lit_codegen.reward.code_eval --help` lists all). To score a trained checkpoint's own generations,
# `lit-codegen validate --config configs/ppo_qwen2.5_3b_apps.yaml --ckpt_path PATH` generates and scores in one go.
set -euo pipefail

mkdir -p outputs/eval
exec python -m lit_codegen.reward.code_eval --data data/apps/test.parquet --mode strict \
    --output outputs/eval/report.json "$@"
