#!/usr/bin/env bash
# Download APPS (codeparrot/apps) and write data/apps/train.parquet and data/apps/test.parquet with chat prompts,
# the input the reference recipe (configs/ppo_qwen2.5_3b_apps.yaml, data_dir: data/apps) trains on.
#
#   bash scripts/preprocess_apps.sh                                   # all of APPS, its own train/test split
#   bash scripts/preprocess_apps.sh --difficulties introductory       # a subset
#   bash scripts/preprocess_apps.sh --source problems.jsonl --local_dir data/mine   # a local APPS-format file
#
# Paths are relative to the current folder: run from the repository root, where the recipe looks for data/apps.
# Arguments after the defaults override them (`python -m lit_codegen.data.preprocess --help` lists all).
set -euo pipefail

exec python -m lit_codegen.data.preprocess --local_dir data/apps --template_type chat "$@"
