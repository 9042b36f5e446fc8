"""Helper process for tests/test_rollout_vllm.py: greedy results of a synced engine and of a fresh one, on CPU.

vLLM keeps its parallel state per process, and an in-process engine that is deleted tears it down under any other
engine of that process. So the tests that compare engines built from different weights run them here, one after the
other, in a process of their own, and read the JSON this writes:

    python tests/vllm_engine_worker.py --prompts P.json --out O.json --dtype bfloat16 [--no-amx] \
        [--sync NEW_DIR] [--fresh NEW_DIR]

`--sync`: an engine starts from the tiny model, scores the prompts greedily (`before`), syncs the weights of the HF
folder NEW_DIR as the trainer would (`iter_actor_params` of the float32 model), and scores them again (`synced`).
`--sync_lora ADAPTERS.pt` (instead of `--sync`): the same with a LoRA actor, the tiny model with the adapters saved in
ADAPTERS.pt (`{"rank", "alpha", "adapters"}`), synced as the trainer syncs LoRA (`changed_only`: the adapted decoder
layers, merged); `pushed` lists the names it sent. `--fresh`: an engine built from NEW_DIR scores them (`fresh`).
`--no-amx` makes vLLM take the CPU GEMM path of CPUs without AMX tiles (oneDNN) for bf16 weights, so an AMX machine
covers both paths.
"""

import argparse
import gc
import json
from types import SimpleNamespace

import torch

from lit_codegen.models.loading import load_causal_lm, load_tokenizer
from lit_codegen.rollout import SamplingParams
from lit_codegen.rollout_vllm import VLLMRollout, iter_actor_params


def greedy(engine: VLLMRollout, prompts: dict, max_new_tokens: int) -> dict:
    """The engine's greedy response ids and their log-probs, as lists."""
    ids, mask = torch.tensor(prompts["input_ids"]), torch.tensor(prompts["attention_mask"])
    params = SamplingParams(greedy=True, max_new_tokens=max_new_tokens)
    roll, logprobs = engine.generate_with_logprobs(ids, mask, params)
    return {"response_ids": roll.response_ids.tolist(), "logprobs": logprobs.tolist(), "texts": roll.texts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", required=True, help="JSON with input_ids and attention_mask (left-padded)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--no-amx", action="store_true")
    parser.add_argument("--sync", help="HF folder whose weights are synced into an engine started from `tiny`")
    parser.add_argument("--sync_lora", help="adapters (torch file) of a LoRA actor synced into an engine from `tiny`")
    parser.add_argument("--fresh", help="HF folder a fresh engine is built from")
    args = parser.parse_args()
    if args.no_amx:
        torch.cpu._is_amx_tile_supported = lambda: False  # what vLLM asks before packing bf16 weights for AMX
    with open(args.prompts) as f:
        prompts = json.load(f)
    tokenizer = load_tokenizer("tiny")
    settings = SimpleNamespace(vllm_gpu_memory_utilization=0.4)
    result = {}
    if args.sync or args.sync_lora:
        engine = VLLMRollout("tiny", tokenizer, settings, max_model_len=512, dtype=args.dtype, kv_cache_gib=0.25)
        result["before"] = greedy(engine, prompts, args.max_new_tokens)
        if args.sync:
            engine.sync_weights(iter_actor_params(load_causal_lm(args.sync)))
        else:
            from lit_codegen.args import LoraArgs
            from lit_codegen.models.lora import add_lora

            saved = torch.load(args.sync_lora)
            actor = add_lora(load_causal_lm("tiny"), LoraArgs(rank=saved["rank"], alpha=saved["alpha"]))
            actor.load_state_dict(saved["adapters"], strict=False)
            result["pushed"] = [name for name, _ in iter_actor_params(actor, changed_only=True)]
            engine.sync_weights(iter_actor_params(actor, changed_only=True))
        result["synced"] = greedy(engine, prompts, args.max_new_tokens)
        result["dtype"] = str(engine.dtype)
        del engine
        gc.collect()
    if args.fresh:
        engine = VLLMRollout(args.fresh, tokenizer, settings, max_model_len=512, dtype=args.dtype, kv_cache_gib=0.25)
        result["fresh"] = greedy(engine, prompts, args.max_new_tokens)
        result["fresh_dtype"] = str(engine.dtype)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
