"""Check packed attention on the device it runs on: on CUDA in bf16 that is torch's flash varlen kernel, which the CPU
tests cannot reach. Exits 1 if it is further from a float64 reference than plain bf16 SDPA is.

    python scripts/bench/gpu_packing_check.py          # CUDA if present, else CPU (the row-by-row path)

1. `varlen_attention_forward` on 8 packed rows of 16-1,024 tokens (14 query heads, 2 key/value heads, head size 64:
   Qwen2.5-0.5B's attention) against softmax attention over an explicit block-diagonal causal mask in float64,
   output and query gradient; the yardstick is SDPA in the same dtype, row by row.
2. The log-probs and values of a 2-layer Qwen2 (random weights, same attention shape) in bf16, packed against padded,
   each against the float32 padded forward.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lit_codegen.models.critic import CriticModel, response_values
from lit_codegen.models.logprob_head import install_logprob_head, response_logprobs
from lit_codegen.models.packing import FLASH_VARLEN, varlen_attention_forward
from lit_codegen.models.tiny import build_tiny_model

LENGTHS = [16, 1024, 300, 57, 700, 128, 31, 512]
HEADS, KV_HEADS, HEAD_DIM = 14, 2, 64


def reference_attention(query, key, value, lengths):
    """Float64 softmax attention over a block-diagonal causal mask; (1, H, L, D)."""
    groups = query.shape[1] // key.shape[1]
    q, k, v = query.double(), key.double().repeat_interleave(groups, 1), value.double().repeat_interleave(groups, 1)
    row = torch.repeat_interleave(torch.arange(len(lengths), device=q.device),
                                  torch.tensor(lengths, device=q.device))
    cols = torch.arange(row.numel(), device=q.device)
    allowed = (row[:, None] == row[None, :]) & (cols[:, None] >= cols[None, :])
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double() - want.detach()).abs().max())


def attention_check(device: torch.device, dtype: torch.dtype) -> dict:
    """Max errors of the varlen path and of row-by-row SDPA (same dtype) against the float64 reference."""
    torch.manual_seed(0)
    total = sum(LENGTHS)
    query = torch.randn(1, HEADS, total, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
    key = torch.randn(1, KV_HEADS, total, HEAD_DIM, device=device, dtype=dtype)
    value = torch.randn(1, KV_HEADS, total, HEAD_DIM, device=device, dtype=dtype)
    grad_out = torch.randn(1, HEADS, total, HEAD_DIM, device=device, dtype=torch.float64)
    want = reference_attention(query, key, value, LENGTHS)
    (want_grad,) = torch.autograd.grad((want * grad_out).sum(), query)
    cu = F.pad(torch.tensor(LENGTHS, device=device).cumsum(0), (1, 0)).int()
    got, _ = varlen_attention_forward(None, query, key, value, None, cu_seq_lens_q=cu, max_length_q=max(LENGTHS))
    got = got.transpose(1, 2)
    (got_grad,) = torch.autograd.grad((got.double() * grad_out).sum(), query)
    rows = zip(query.split(LENGTHS, 2), key.split(LENGTHS, 2), value.split(LENGTHS, 2))
    sdpa = torch.cat([F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True) for q, k, v in rows], 2)
    (sdpa_grad,) = torch.autograd.grad((sdpa.double() * grad_out).sum(), query)
    return {"varlen_out": _max_error(got, want), "sdpa_out": _max_error(sdpa, want),
            "varlen_grad": _max_error(got_grad, want_grad), "sdpa_grad": _max_error(sdpa_grad, want_grad)}


def model_check(device: torch.device, model_dir: Path) -> dict:
    """Max |difference| of bf16 packed and padded log-probs / values from the float32 padded forward."""
    torch.manual_seed(0)
    prompt, response = 256, 512
    p_lens, r_lens = [256, 17, 100, 64], [512, 40, 300, 1]
    cols = torch.arange(prompt + response)
    attn = ((cols >= prompt - torch.tensor(p_lens)[:, None]) & (cols < prompt + torch.tensor(r_lens)[:, None])).long()
    seq = torch.randint(3, 600, attn.shape) * attn
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    seq, attn, pos = seq.to(device), attn.to(device), pos.to(device)
    mask = attn[:, prompt:].bool()
    out = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            actor = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
            install_logprob_head(actor)
            critic = CriticModel.from_pretrained(str(model_dir)).to(device)
            critic.backbone.to(dtype)  # the value head stays float32, as in training
            for layout in ("padded", "packed"):
                logprobs, _ = response_logprobs(actor, seq, attn, pos, prompt, layout=layout)
                out[str(dtype).split(".")[1], layout] = (logprobs[mask].double(),
                                                         response_values(critic, seq, attn, pos, prompt,
                                                                         layout=layout)[mask].double())
    want_lp, want_v = out["float32", "padded"]
    report = {}
    for layout in ("padded", "packed"):
        lp, v = out["bfloat16", layout]
        report[f"bf16_{layout}_logprob"] = float((lp - want_lp).abs().max())
        report[f"bf16_{layout}_value"] = float((v - want_v).abs().max())
    return report


def main() -> int:
    """Run both checks; print one JSON report; 1 if the varlen path is worse than the yardstick."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "flash_varlen": FLASH_VARLEN if device.type == "cuda" else None, "dtype": str(dtype)}
    report["attention"] = attention_check(device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp), num_hidden_layers=2, hidden_size=HEADS * HEAD_DIM,
                                     num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                     intermediate_size=4 * HEADS * HEAD_DIM, max_position_embeddings=2048)
        report["model"] = model_check(device, model_dir)
    print(json.dumps(report, indent=2))
    a, m = report["attention"], report["model"]
    ok = (a["varlen_out"] <= 2 * a["sdpa_out"] + 1e-6 and a["varlen_grad"] <= 2 * a["sdpa_grad"] + 1e-6
          and m["bf16_packed_logprob"] <= 2 * m["bf16_padded_logprob"] + 1e-3
          and m["bf16_packed_value"] <= 2 * m["bf16_padded_value"] + 1e-3)
    print("packed attention:", "OK" if ok else "WORSE than bf16 SDPA")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
