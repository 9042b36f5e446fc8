"""Export a PPO checkpoint's actor (and, on request, its critic) as Hugging Face model directories.

    python -m lit_codegen.export --ckpt_path runs/x/checkpoints/last.ckpt --out exported/ [--critic] [--adapters]

writes `exported/` (actor + tokenizer, loadable by `AutoModelForCausalLM.from_pretrained` and by vLLM) and, with
`--critic`, `exported/critic/` (`CriticModel.from_pretrained`). Works for single-file checkpoints and for the sharded
directories that the FSDP (ModelParallel) strategy writes. A LoRA run (`--model.lora.rank > 0`) exports merged
weights (peft's `merge_and_unload`: an ordinary HF model); with `--adapters`, the actor's adapters instead
(`adapter_config.json` + `adapter_model.safetensors`, for `peft.PeftModel.from_pretrained(base, exported/)` or a
LoRA-enabled vLLM), next to the tokenizer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from lit_codegen.args import LoraArgs
from lit_codegen.models.critic import CriticModel
from lit_codegen.models.loading import load_causal_lm, load_tokenizer


def load_checkpoint(ckpt_path: str | Path) -> dict:
    """Load a Lightning checkpoint: a `.ckpt` file or a sharded (torch.distributed.checkpoint) directory."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        if not (path / ".metadata").is_file():
            raise ValueError(f"{path} is a folder but not a sharded checkpoint (no .metadata in it); give a "
                             "checkpoint, e.g. checkpoints/last.ckpt")

        with tempfile.TemporaryDirectory() as tmp:  # tensors (state_dict, optimizers) in DCP shards
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            ckpt = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
        meta = path / "meta.pt"  # Lightning keeps the non-tensor entries (ppo_state, hyper_parameters) here
        if meta.is_file():
            ckpt.update(torch.load(meta, map_location="cpu", weights_only=False))
        return ckpt
    return torch.load(path, map_location="cpu", weights_only=False)


def _sub_state_dict(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, critic: bool = False, adapters: bool = False) -> Path:
    """Write the checkpoint's actor (+ tokenizer) to `out_dir`, and its critic to `out_dir/critic` if asked.

    Args:
        ckpt_path: A checkpoint written by `PPOModule` (file or sharded directory).
        out_dir: Output directory (created).
        critic: Also export the critic (value model; a LoRA critic merged).
        adapters: Write the actor's LoRA adapters (peft format) instead of merged weights; LoRA runs only.

    Returns:
        The output directory.
    """
    ckpt = load_checkpoint(ckpt_path)
    state = ckpt.get("ppo_state")
    if state is None:
        raise ValueError(f"{ckpt_path} was not written by lit_codegen.module.PPOModule (no 'ppo_state' entry)")
    hp = ckpt.get("hyper_parameters", {})
    model_path = _base_model(state["model_path"], hp.get("model"))
    weights = ckpt["state_dict"]
    critic_weights = _sub_state_dict(weights, "critic.")
    if critic and not critic_weights:
        raise ValueError(f"{ckpt_path} has no critic (the run used a critic-free advantage estimator)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    lora = _lora_args(hp.get("lora"))
    rank = lora.rank
    if adapters and not rank:
        raise ValueError(f"--adapters: {ckpt_path} was not trained with LoRA (model.lora.rank is 0); export without it")
    # Everything is built before anything is written: a failed export leaves no half-written (or empty) folder.
    actor = load_causal_lm(model_path, dtype=hp.get("dtype", "float32"))
    if rank:
        actor = _with_lora(actor, _sub_state_dict(weights, "actor."), lora, merge=not adapters)
    else:
        actor.load_state_dict(_sub_state_dict(weights, "actor."), strict=True)
    tokenizer = load_tokenizer(model_path)
    value_model = None
    if critic:
        critic_path = hp.get("critic_model") or model_path
        value_model = CriticModel.from_pretrained(critic_path, dtype=hp.get("dtype", "float32"))
        if rank and lora.critic:
            value_model.value_head.load_state_dict(_sub_state_dict(critic_weights, "value_head."), strict=True)
            value_model.backbone = _with_lora(value_model.backbone, _sub_state_dict(critic_weights, "backbone."), lora)
        else:
            value_model.load_state_dict(critic_weights, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    actor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if value_model is not None:
        value_model.save_pretrained(out / "critic")
    return out


def _lora_args(saved) -> LoraArgs:
    """The run's `LoraArgs` from its `hyper_parameters`: a `LoraArgs`, or a dict when LightningCLI built the module.

    Runs from before LoRA existed have none: rank 0.
    """
    if saved is None:
        return LoraArgs()
    return saved if isinstance(saved, LoraArgs) else LoraArgs(**(saved if isinstance(saved, dict) else vars(saved)))


def _with_lora(base: torch.nn.Module, weights: dict, lora, merge: bool = True) -> torch.nn.Module:
    """`base` with the checkpoint's adapters: merged into a plain HF model, or as a `peft.PeftModel` (`merge=False`).

    The checkpoint holds the adapters (its frozen base weights were left out); every adapter key must load, and every
    key of `weights` must be one. Built with `peft.get_peft_model`, which names the layers as the trainer's in-place
    injection did.
    """
    from peft import get_peft_model

    from lit_codegen.models.lora import is_adapter_param, lora_config

    model = get_peft_model(base, lora_config(lora))
    adapter_keys = {k for k in base.state_dict() if is_adapter_param(k)}
    missing, unexpected = adapter_keys - set(weights), set(weights) - set(base.state_dict())
    if missing or unexpected:
        raise ValueError(f"the checkpoint's adapters do not fit model.lora {lora}: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    base.load_state_dict(weights, strict=False)  # the frozen base weights stay as loaded from the base model
    return model.merge_and_unload() if merge else model


def _base_model(model_path: str, configured: str | None) -> str:
    """The model the actor is rebuilt from (architecture and tokenizer; the weights come from the checkpoint).

    That is the path the run trained from (`ppo_state.model_path`), unless it was a local folder that is gone (e.g.
    the warm start's cache folder, after the cache was cleaned or on another machine): then the model the run was
    configured with (`hyper_parameters.model`, e.g. `tiny` or a hub id), which has the same architecture and tokenizer.
    """
    if Path(model_path).is_dir() or not model_path.startswith(("/", ".", "~")) or not configured:
        return model_path
    print(f"the checkpoint's base model folder {model_path} is gone; rebuilding the actor from {configured!r} "
          "(the same architecture and tokenizer; the weights come from the checkpoint)", file=sys.stderr)
    return configured


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="PPOModule checkpoint (.ckpt file or sharded directory)")
    parser.add_argument("--out", required=True, help="output directory for the HF model")
    parser.add_argument("--critic", action="store_true", help="also export the critic to OUT/critic")
    parser.add_argument("--adapters", action="store_true",
                        help="LoRA runs: write the actor's adapters (peft format) instead of merged weights")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.ckpt_path, args.out, critic=args.critic, adapters=args.adapters)
    except (OSError, ValueError, RuntimeError) as err:  # OSError: also a hub model that cannot be fetched
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
