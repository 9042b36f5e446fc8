#!/usr/bin/env bash
# The reference training run: PPO on APPS with Qwen2.5-3B-Instruct on one node of 4 GPUs (80 GB each).
#
#   bash scripts/preprocess_apps.sh                               # once: data/apps/{train,test}.parquet
#   bash scripts/train/code_generation.sh                         # the recipe as is
#   bash scripts/train/code_generation.sh --trainer.max_steps 400 --model.init_args.rollout.n 4   # any override
#   bash scripts/train/code_generation.sh --ckpt_path last        # resume the run in trainer.default_root_dir
#
# Run it from the repository root: the YAML's data_dir (data/apps) and default_root_dir (outputs/...) are relative to
# the current folder, as the other scripts' paths are.
# Every argument goes to `lit-codegen fit` after the config, so it overrides the YAML
# (configs/ppo_qwen2.5_3b_apps.yaml). `python scripts/memory_plan.py --config ...` shows what fits per GPU.
# The command runs as `python -m lit_codegen.cli fit` (the same CLI as `lit-codegen fit`); PYTHON picks the interpreter.
#
# Environment (defaults set below only when unset):
#   WANDB_MODE=offline           log to disk only (sync later with `wandb sync`); unset = online (needs `wandb login`)
#   TOKENIZERS_PARALLELISM=false no fork warnings from the tokenizer in data loader workers
#   VLLM_ENABLE_V1_MULTIPROCESSING=0  the vLLM engine runs inside each trainer process (weight sync is a Python
#                                     iterator); lit_codegen.rollout_vllm also sets it before importing vLLM
#   VLLM_LOGGING_LEVEL=WARNING   quieter vLLM start-up
#   PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True   less fragmentation when vLLM's KV cache and the training
#                                     activations take turns on the same GPU
#   CUDA_VISIBLE_DEVICES         which GPUs of the node to use (4 of them for the recipe as is)
#
# Multi-node (e.g. 2 nodes x 4 GPUs): start the same command on every node and tell Lightning the topology; the
# data-parallel size must equal GPUs per node x nodes:
#   SLURM (#SBATCH --nodes=2 --ntasks-per-node=4 --gpus-per-node=4), one task per GPU:
#     srun bash scripts/train/code_generation.sh --trainer.num_nodes 2 \
#         --trainer.strategy.init_args.data_parallel_size 8
#   torchrun, on each node (node_rank 0 and 1; MASTER is node 0's address):
#     torchrun --nnodes 2 --nproc_per_node 4 --node_rank $NODE_RANK --master_addr $MASTER --master_port 29500 \
#         -m lit_codegen.cli fit --config configs/ppo_qwen2.5_3b_apps.yaml --trainer.num_nodes 2 \
#         --trainer.strategy.init_args.data_parallel_size 8
# data.train_batch_size is per rank: with 8 GPUs use 8 to keep 64 prompts per PPO iteration.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONFIG="${CONFIG:-$ROOT/configs/ppo_qwen2.5_3b_apps.yaml}"

export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

exec "${PYTHON:-python}" -m lit_codegen.cli fit --config "$CONFIG" "$@"
