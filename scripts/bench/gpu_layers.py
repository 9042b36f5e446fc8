"""The ceiling of the PPO update on a GPU: the bare Qwen2.5-0.5B decoder stack, eager and compiled, and its kernels.

    python scripts/bench/gpu_layers.py --json layers.json     # 1 GPU: a minute, most of it compilation
    python scripts/bench/gpu_layers.py --smoke                # tiny dims on CPU: checks the script runs

What it measures (random-init `Qwen2Model` with the Qwen2.5-0.5B architecture, bf16 weights, no FSDP, no optimizer,
64 sequences x 512 tokens, a scalar loss on the last hidden states):

- fwd + bwd of the 24-layer stack, eager and with every layer compiled (`lit_codegen.parallel.compile_decoder_layers`),
  in TFLOP/s: 6 x tokens x (layer matmul parameters x layers + L x H x T causal attention multiply-adds);
- a `torch.profiler` kernel table of the compiled fwd + bwd (written to `--profile_out`);
- causal GQA attention fwd + bwd per layer for each SDPA backend, with `enable_gqa` and with repeated KV heads;
- the layer's matmul shapes alone (q, k/v, fused qkv, gate, fused gate+up, down, a weight gradient);
- AdamW (multi-tensor vs fused) and gradient clipping on 494 M float32 parameters.

`scripts/bench/gpu_ppo.py` measures the whole PPO iteration; this script tells how much of the gap to the hardware is
the model's own and how much the training loop adds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_ppo import QWEN25_05B, SMOKE  # the same architecture as the PPO benchmark (scripts/bench is on sys.path)
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from lit_codegen.parallel import compile_decoder_layers


def timed(fn: Callable[[], object], device: torch.device, n: int = 5, warmup: int = 2) -> float:
    """Mean seconds of `fn()` over `n` calls after `warmup` calls, the device synchronised at both ends."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / n


def run(dims: dict, batch: int, seq_len: int, device: torch.device, profile_out: Path | None) -> dict:
    """All measurements; returns `{name: {"ms": ..., "tflops": ...}}` (TFLOP/s where the work has a FLOP count)."""
    results: dict[str, dict] = {}

    def record(name: str, seconds: float, flops: float | None = None) -> None:
        results[name] = {"ms": seconds * 1e3, **({"tflops": flops / seconds / 1e12} if flops else {})}
        print(f"{name}: {seconds * 1e3:.2f} ms" + (f", {flops / seconds / 1e12:.0f} TFLOP/s" if flops else ""),
              flush=True)

    h, layers, inter = dims["hidden_size"], dims["num_hidden_layers"], dims["intermediate_size"]
    heads, kv_heads = dims["num_attention_heads"], dims["num_key_value_heads"]
    kv = kv_heads * h // heads
    layer_params = 2 * h * h + 2 * h * kv + 3 * h * inter
    tokens = batch * seq_len
    torch.manual_seed(0)
    model = Qwen2Model(Qwen2Config(**dims, attn_implementation="sdpa")).to(device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, dims["vocab_size"], (batch, seq_len), device=device)
    stack_flops = 6 * tokens * layers * (layer_params + h * seq_len)

    def step() -> None:
        model(input_ids=ids, use_cache=False).last_hidden_state.float().pow(2).mean().backward()

    record("stack_fwd_bwd_eager", timed(step, device, n=3), stack_flops)
    compile_decoder_layers(model)
    start = time.perf_counter()
    step()
    _sync(device)
    results["compile_s"] = {"s": time.perf_counter() - start}
    record("stack_fwd_bwd_compiled", timed(step, device), stack_flops)
    if profile_out is not None:
        profile_out.write_text(_profile(step, device))

    q = torch.randn(batch, heads, seq_len, h // heads, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, kv_heads, seq_len, h // heads, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    attention_flops = 3 * 4 * batch * heads * seq_len * seq_len * (h // heads) / 2
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "default": None}
    for name, backend in backends.items():
        for gqa in (True, False):
            try:
                record(f"attention_{name}_{'gqa' if gqa else 'repeat_kv'}",
                       timed(lambda: _attention(q, k, v, backend, gqa), device), attention_flops)
            except RuntimeError as err:  # a backend that cannot run these shapes on this device
                results[f"attention_{name}_{'gqa' if gqa else 'repeat_kv'}"] = {"error": str(err)[:200]}

    x = torch.randn(tokens, h, device=device, dtype=torch.bfloat16)
    for name, n_out in (("q", h), ("kv", kv), ("qkv_fused", h + 2 * kv), ("gate", inter), ("gate_up_fused", 2 * inter)):
        w = torch.randn(n_out, h, device=device, dtype=torch.bfloat16)
        record(f"matmul_{name}", timed(lambda: x @ w.T, device, n=10), 2 * tokens * h * n_out)
    y = torch.randn(tokens, inter, device=device, dtype=torch.bfloat16)
    w_down = torch.randn(h, inter, device=device, dtype=torch.bfloat16)
    record("matmul_down", timed(lambda: y @ w_down.T, device, n=10), 2 * tokens * h * inter)
    record("matmul_gate_weight_grad", timed(lambda: y.T @ x, device, n=10), 2 * tokens * h * inter)

    n_params = dims["vocab_size"] * h + layers * layer_params
    params = [torch.zeros(dims["vocab_size"], h, device=device, requires_grad=True)]
    params += [torch.zeros(layer_params // 7, device=device, requires_grad=True) for _ in range(7 * layers)]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    results["optimizer_params"] = {"count": n_params}
    for impl in ("foreach", "fused"):
        optimizer = torch.optim.AdamW(params, lr=1e-6, **{impl: True})
        record(f"adamw_{impl}", timed(optimizer.step, device))
    record("clip_grad_norm", timed(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), device))
    return results


def _attention(q, k, v, backend, gqa: bool) -> None:
    if not gqa:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    if backend is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    out.sum().backward()


def _profile(step: Callable[[], None], device: torch.device) -> str:
    """Kernel table (self device time) of two calls of `step`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        step()
        _sync(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=30, max_name_column_width=100)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python scripts/bench/gpu_layers.py [--smoke] [--json OUT] [--profile_out TXT]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny dims on CPU")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--profile_out", type=Path, help="write the compiled stack's kernel table here")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_layers: no CUDA device; run with --smoke on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    dims, (batch, seq_len) = (SMOKE, (2, 32)) if args.smoke else (QWEN25_05B, (64, 512))
    results = run(dims, batch, seq_len, device, args.profile_out)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                         "torch": torch.__version__, "batch": batch, "seq_len": seq_len,
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
